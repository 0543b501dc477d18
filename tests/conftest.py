import argparse
import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from relmon.data import load_sample, to_tensor
from relmon.models import load_embedded

# --------------------------------------------------------------------------------------------------
# shared helpers (import them: ``from conftest import run_cli``)


def run_cli(argv: list[str]) -> int:
    """Run ``relmon calibrate | monitor | serve`` in this process: the exit code the CLI returns."""
    from relmon.cli import jobs as cli_jobs

    parser = argparse.ArgumentParser(prog="relmon")
    cli_jobs.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def sample_png_bytes(i: int) -> bytes:
    """Image ``i`` of the shipped Fashion-MNIST sample, PNG-encoded."""
    images, _ = load_sample()
    buf = io.BytesIO()
    Image.fromarray(images[i]).save(buf, format="PNG")
    return buf.getvalue()


def write_sample_pngs(folder: Path, n: int, start: int = 0, name: str = "img{:04d}.png") -> list[Path]:
    """Images ``start .. start + n - 1`` of the shipped sample as PNG files ``folder / name.format(i)``."""
    images, _ = load_sample()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        path = folder / name.format(i)
        Image.fromarray(images[i]).save(path)
        out.append(path)
    return out


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
