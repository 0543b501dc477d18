"""The wheel carries the shipped weights and sample, and a version."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import relmon

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_wheel_contains_package_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    wheel, = tmp_path.glob("relmon-*.whl")
    assert wheel.name.startswith(f"relmon-{relmon.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "relmon/models/weights/manifest.json" in names
    assert "relmon/models/weights/fmnist_cnn.pt" in names and "relmon/models/weights/fmnist_vgg.pt" in names
    assert sum(n.startswith("relmon/models/weights/fmnist_cnn_step") for n in names) >= 8
    assert "relmon/data/sample/fashion_mnist_test_2000.npz" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "relmon = relmon.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert wheel.stat().st_size < 8 * 2**20
