"""The wheel carries the shipped weights and sample, a version, and the extras of the entry points;
the core works without the optional packages, and each entry point names the extra it needs."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import relmon
from relmon.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    path, = out.glob("relmon-*.whl")
    return path


@pytest.mark.integration
def test_wheel_contains_package_data(wheel):
    assert wheel.name.startswith(f"relmon-{relmon.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "relmon/models/weights/manifest.json" in names
    assert "relmon/models/weights/fmnist_cnn.pt" in names and "relmon/models/weights/fmnist_vgg.pt" in names
    assert sum(n.startswith("relmon/models/weights/fmnist_cnn_step") for n in names) >= 8
    assert "relmon/data/sample/fashion_mnist_test_2000.npz" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "relmon = relmon.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert wheel.stat().st_size < 8 * 2**20


def _requires(metadata: str) -> dict[str, set[str]]:
    """Requires-Dist of a wheel's METADATA: extra ('' for the core) -> distribution names."""
    out: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.partition(":")[2].strip()
            name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()
            extra = re.search(r"extra\s*==\s*['\"]([\w-]+)['\"]", spec)
            out.setdefault(extra.group(1) if extra else "", set()).add(name)
    return out


@pytest.mark.integration
def test_wheel_metadata_declares_the_extras_of_the_entry_points(wheel):
    zf = zipfile.ZipFile(wheel)
    metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    assert {"lightning", "monitor", "report", "all"} <= extras
    req = _requires(metadata)
    # the core does not pull Lightning, Prometheus, POT or matplotlib ...
    assert not req[""] & {dist for dist, _ in EXTRAS.values()}
    assert {"torch", "zennit", "torchmetrics"} <= req[""]
    # ... each optional module's distribution is in the extra relmon.extras names in its error message
    for module, (dist, extra) in EXTRAS.items():
        assert dist in req[extra], f"{module}: {dist} is not in the [{extra}] extra"
    assert any("relmon[lightning,monitor,report]" in line.replace(" ", "") for line in metadata.splitlines()
               if 'extra == "all"' in line or "extra == 'all'" in line)


# The optional packages are made unimportable in a fresh interpreter (as if pip had installed only the
# core), then the core is used and each entry point is tried.
BLOCKED_RUN = r"""
import contextlib, importlib.abc, io, json, sys
BLOCKED = {"pytorch_lightning", "lightning", "prometheus_client", "matplotlib", "ot"}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
import relmon
from relmon.data import load_sample, to_tensor

out = {}
model = relmon.load_embedded("fmnist_cnn")
x = to_tensor(load_sample()[0][:4])
hm = relmon.to_heatmap(relmon.explain(model, x, "lrp"), "lrp")
out["aopc"] = relmon.region_perturbation(model, x, hm, region=7, steps=4).aopc.tolist()
try:
    import relmon.lightning
except ImportError as err:
    out["import relmon.lightning"] = f"{type(err).__name__}: {err}"
try:
    relmon.monitor("fmnist_cnn", "sample", n=4, steps=2, region=7)
except ImportError as err:
    out["relmon.monitor"] = f"{type(err).__name__}: {err}"
from relmon.cli import main

for args in (["monitor", "--n", "4"], ["calibrate", "--calibration-n", "4"], ["report", sys.argv[1], "--out",
             sys.argv[2]], ["demo", "--methods-only", "--n", "2", "--out", sys.argv[2]]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(args)
    out[args[0]] = [rc, err.getvalue()]
print(json.dumps(out))
"""


@pytest.mark.integration
def test_the_core_runs_without_the_extras_and_entry_points_name_theirs(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(tmp_path / "records"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["aopc"]) == 4 and all(v == v for v in out["aopc"])  # the core scored without the extras
    assert out["import relmon.lightning"].startswith("MissingExtraError: relmon.lightning")
    assert "pip install 'relmon[lightning]'" in out["import relmon.lightning"]
    assert "'prometheus-client'" in out["relmon.monitor"] and "pip install 'relmon[monitor]'" in out["relmon.monitor"]
    for command, extra in [("monitor", "monitor"), ("calibrate", "monitor"), ("report", "report"), ("demo", "report")]:
        rc, err = out[command]
        assert rc == 3 and f"pip install 'relmon[{extra}]'" in err, (command, rc, err)
        assert "Traceback" not in err
