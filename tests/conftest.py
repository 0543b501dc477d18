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
