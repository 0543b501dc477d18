import os

import pytest
import torch

from relmon.data import load_sample, to_tensor
from relmon.models import load_embedded


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sample_batch():
    images, labels = load_sample()
    return to_tensor(images[:8]), torch.from_numpy(labels[:8])


@pytest.fixture(scope="session")
def cnn():
    return load_embedded("fmnist_cnn")


@pytest.fixture(scope="session")
def vgg():
    return load_embedded("fmnist_vgg")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) only the CUDA tests may skip: a missing tool or data set there is a failed
    set-up, not a reason to pass quietly."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and "CUDA" not in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must install everything: {report.longrepr}"


@pytest.fixture
def exact_fp32():
    """True float32 on CUDA: PyTorch runs float32 convolutions in TF32 on Ampere and later GPUs by
    default (``torch.backends.cudnn.allow_tf32``), which moves heatmaps and curves by up to ~1 %
    relative against the CPU (measured on an H200: benchmarks/RESULTS.md)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
