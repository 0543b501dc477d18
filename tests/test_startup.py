"""The job's start-up path: the Lightning-free runner gives the Lightning runner's records
and summaries, the job's imports leave Lightning, torchmetrics and torchvision out, zennit loads without
its package ``__init__`` and still works in full for a user; the review fixes (one fraction → L rounding,
one default L, one definition of the exit codes). benchmarks/bench_startup.py measures the time.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_sample_pngs

from relmon.config import ConfigError, MonitorConfig, config_from_dict
from relmon.jobs.inputs import build_stream
from relmon.jobs.model import load_job_model
from relmon.jobs.scoring import score_stream

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def _same_summary(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for method in a:
        assert a[method].keys() == b[method].keys(), method
        for key, va in a[method].items():
            vb = b[method][key]
            assert (math.isnan(va) and math.isnan(vb)) or va == vb, (method, key, va, vb)


# --------------------------------------------------------------------------------------------------
# the two runners agree


def test_plain_and_lightning_runners_give_identical_records_and_summaries():
    """Shipped sample, two methods, seeded sampling, a per-window cap, the random baseline on a subset:
    every column of every record and every summary figure are equal (exactly, same device)."""
    cfg = MonitorConfig(n=40, region=7, steps=8, batch_size=16, sample_rate=0.7, max_samples=20,
                        random_fraction=0.5, methods=("lrp:epsilon_0_01", "sensitivity"))
    model = load_job_model(cfg)
    stream = build_stream(cfg, model)
    plain, s_plain, _ = score_stream(cfg, model, stream)
    light, s_light, monitor = score_stream(replace(cfg, runner="lightning"), model, stream)
    assert type(monitor).__name__ == "RelevanceMonitor"  # the Lightning runner really ran
    assert not monitor.trainer.predict_loop.predictions  # the frames are held once, by the StopCallback
    assert len(plain) > 20 and plain["sample_id"].nunique() == 20  # the cap bit, the subset is partial
    assert 0 < (plain["method"] == "random").sum() < 20
    pd.testing.assert_frame_equal(plain, light, check_exact=True)
    _same_summary(s_plain, s_light)
    assert s_plain["_inputs"] == {"seen": 40, "bad": 0, "padding_skipped": 0}


def test_runners_agree_on_a_folder_with_a_bad_file(tmp_path):
    write_sample_pngs(tmp_path, 6, name="img{}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cfg = MonitorConfig(input=str(tmp_path), n=None, region=7, steps=4, batch_size=4, methods=("lrp",))
    model = load_job_model(cfg)
    plain, s_plain, _ = score_stream(cfg, model, build_stream(cfg, model))
    light, s_light, _ = score_stream(replace(cfg, runner="lightning"), model, build_stream(cfg, model))
    pd.testing.assert_frame_equal(plain, light, check_exact=True)
    _same_summary(s_plain, s_light)
    assert s_plain["_inputs"]["bad"] == 1 and s_plain["_inputs"]["seen"] == 6


def test_plain_runner_scores_a_train_mode_model_deterministically_and_restores_its_mode():
    """Dropout in train mode would make every forward random: the scoring runs in eval mode (the runner
    sets it, as Lightning's predict loop; explain and the perturbation engine set it too), and the
    runner hands the model back in the mode it had."""
    from relmon.data.streams import TensorStream, stream_loader
    from relmon.jobs.runner import run_plain
    from relmon.models import Preprocessing, attach_preprocessing
    from relmon.scoring import BatchScorer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(32, 3))
    net = attach_preprocessing(net, Preprocessing(mean=(0.0,), std=(1.0,)))
    net.train()
    stream = TensorStream(torch.rand(6, 1, 8, 8))
    scorer = BatchScorer(net, methods=("sensitivity",), region=2, steps=4)
    a, _ = run_plain(scorer, stream_loader(stream, batch_size=3))
    b, _ = run_plain(scorer, stream_loader(stream, batch_size=3))
    pd.testing.assert_frame_equal(a, b)
    assert net.training and all(m.training for m in net.modules())


def test_runner_field_is_validated_and_plain_by_default():
    assert MonitorConfig().runner == "plain"
    assert config_from_dict({"runner": "Lightning"}).runner == "lightning"
    with pytest.raises(ConfigError, match=r"'runner': expected plain or lightning, got 'fast'.*fix: set runner"):
        config_from_dict({"runner": "fast"})


def test_unavailable_accelerator_is_named():
    from relmon.config import ConfigError
    from relmon.jobs.runner import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available; fix: set accelerator: cpu"):
            resolve_device("gpu")


def test_run_timeout_with_the_lightning_runner_still_exits_7(tmp_path, capsys):
    """The plain runner is covered by tests/test_reliability.py (the default); the Lightning one here."""
    from relmon.cli import main
    from relmon.lightning import read_records

    rec = tmp_path / "rec"
    # 2,000 images cannot be scored within the deadline on any machine (48 sometimes were, on a quiet one)
    rc = main(["monitor", "--n", "2000", "--steps", "49", "--batch-size", "8", "--records", str(rec),
               "--runner", "lightning", "--textfile", str(tmp_path / "m.prom"), "--run-timeout-seconds", "1"])
    err = capsys.readouterr().err
    assert rc == 7, err
    assert "run_timeout_seconds (1 s) passed" in err and "records of the finished batches" in err
    n = read_records(rec)["sample_id"].nunique()
    assert 0 < n < 2000 and n % 8 == 0


# --------------------------------------------------------------------------------------------------
# what the job imports


def test_job_import_path_leaves_lightning_torchmetrics_and_torchvision_out():
    """Import the job, load every embedded model, build the LRP composite and explain, and score a
    window with the plain runner: no pytorch_lightning, torchmetrics or torchvision in sys.modules."""
    code = """
import sys, torch
import relmon.jobs.monitor, relmon.jobs.runner, relmon.explain
from relmon.explain import explain
from relmon.explain.lrp import composite_for
from relmon.models import list_embedded, load_embedded
from relmon.config import MonitorConfig
from relmon.jobs.inputs import build_stream
from relmon.jobs.model import load_job_model
from relmon.jobs.scoring import score_stream
for name in list_embedded():
    model = load_embedded(name)
    x = torch.rand(2, 1, 28, 28)
    composite_for("epsilon_plus_flat", model, x)
    assert explain(model, x, "lrp:epsilon_0_01").shape == x.shape
cfg = MonitorConfig(n=8, region=7, steps=4, batch_size=8)
model = load_job_model(cfg)
records, summary, _ = score_stream(cfg, model, build_stream(cfg, model))
assert len(records) == 16, len(records)
print("LOADED:" + ",".join(m for m in ("pytorch_lightning", "lightning", "torchmetrics", "torchvision",
                                       "zennit.torchvision") if m in sys.modules))
"""
    assert _run(code) == "LOADED:"


@pytest.mark.slow
def test_streams_module_imports_no_lightning_and_its_datamodule_still_works():
    code = """
import sys, pickle
import relmon.data.streams as streams
before = "pytorch_lightning" in sys.modules
from relmon.data import StreamDataModule
import pytorch_lightning as pl
dm = StreamDataModule(streams.TensorStream(__import__("torch").rand(5, 1, 4, 4)), batch_size=2)
assert isinstance(dm, pl.LightningDataModule) and StreamDataModule is streams.StreamDataModule
assert type(pickle.loads(pickle.dumps(dm))) is StreamDataModule
assert [len(b["x"]) for b in dm.predict_dataloader()] == [2, 2, 1]
print("BEFORE:" + str(before))
"""
    assert _run(code) == "BEFORE:False"


@pytest.mark.slow
def test_zennit_without_its_init_still_works_in_full_for_a_user():
    """relmon loads zennit's submodules without its ``__init__`` (no torchvision); afterwards a user's
    ``import zennit`` still reaches every submodule, by attribute and by ``from`` import, and LRP gives
    the same relevance as with zennit imported in full first."""
    lazy = """
import sys, json, torch
from relmon.explain import explain
from relmon.models import load_embedded
torch.manual_seed(0)
x = torch.rand(3, 1, 28, 28)
r = explain(load_embedded("fmnist_cnn"), x, "lrp")
assert "zennit" in sys.modules and "zennit.torchvision" not in sys.modules and "torchvision" not in sys.modules
import zennit
assert zennit.attribution.Gradient.__name__ == "Gradient" and "cmap" in dir(zennit)
from zennit.torchvision import ResNetCanonizer
assert "torchvision" in sys.modules and zennit.torchvision.ResNetCanonizer is ResNetCanonizer
try:
    zennit.nothing
except AttributeError as err:
    assert "no attribute 'nothing'" in str(err)
else:
    raise AssertionError("zennit.nothing did not raise")
print(json.dumps(r.flatten().tolist()))
"""
    full = """
import sys, json, torch
import zennit  # the package __init__: every submodule, torchvision too
assert "zennit.torchvision" in sys.modules
from relmon.explain._zennit import zennit_module, zennit_package
assert zennit_package() is zennit and zennit_module("composites") is zennit.composites
from relmon.explain import explain
from relmon.models import load_embedded
torch.manual_seed(0)
x = torch.rand(3, 1, 28, 28)
r = explain(load_embedded("fmnist_cnn"), x, "lrp")
print(json.dumps(r.flatten().tolist()))
"""
    a, b = np.array(json.loads(_run(lazy))), np.array(json.loads(_run(full)))
    assert a.shape == (3 * 28 * 28,) and np.abs(a).sum() > 0
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# review fixes


def test_one_fraction_to_steps_rounding_for_callback_and_early_steps():
    """0.5 of the 49 regions of 4x4 on 28x28 is 24.5: halves round up everywhere (25), as
    steps_for_fraction (Python's round() would give 24)."""
    from relmon.lightning import HeatmapQualityCallback
    from relmon.perturbation import steps_for_fraction
    from relmon.scoring import early_steps

    assert steps_for_fraction(28, 28, 4, 0.5) == 25
    assert HeatmapQualityCallback(region=4, fraction=0.5).check_geometry(28, 28) == (4, 25)
    assert early_steps((28, 28), 4, 49, fraction=0.5) == 25
    assert early_steps((28, 28), 4, 10, fraction=0.5) == 10  # capped at the curve's L


def test_default_steps_are_the_jobs_and_the_papers_share():
    from relmon.lightning import RelevanceMonitor
    from relmon.perturbation import DEFAULT_FRACTION, DEFAULT_STEPS, steps_for_fraction
    from relmon.scoring import BatchScorer

    cfg = MonitorConfig()
    assert DEFAULT_STEPS == cfg.steps == steps_for_fraction(28, 28, cfg.region, DEFAULT_FRACTION) == 8
    assert inspect.signature(BatchScorer).parameters["steps"].default == DEFAULT_STEPS
    # the monitor's settings are its scorer's (declared once, in BatchScorer)
    assert RelevanceMonitor(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))).steps == DEFAULT_STEPS


def test_exit_codes_are_defined_once():
    import relmon.cli.jobs as cli
    import relmon.jobs.signals as sig

    assert (sig.EXIT_INTERRUPTED, sig.EXIT_EMPTY, sig.EXIT_TIMEOUT) == (5, 6, 7)
    defining = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "relmon").rglob("*.py"))
                if "EXIT_TIMEOUT = " in p.read_text()]
    assert defining == ["relmon/exitcodes.py"]
    for module in ("jobs/signals.py", "jobs/errors.py", "cli/jobs.py"):
        assert "from relmon.exitcodes import" in (ROOT / "relmon" / module).read_text(), module
    assert sig.RunInterrupted("x", "timeout").exit_code == cli.EXIT_TIMEOUT


def test_stop_callback_keeps_the_frames_and_lightning_does_not():
    """The Lightning runner reads the records from the StopCallback; Lightning holds no second copy."""
    import pytorch_lightning as pl

    from relmon.data.streams import StreamDataModule
    from relmon.jobs.signals import stop_callback
    from relmon.lightning import RelevanceMonitor

    cfg = MonitorConfig(n=8, region=7, steps=4, batch_size=4)
    model = load_job_model(cfg)
    stop = stop_callback()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False, callbacks=[stop])
    out = trainer.predict(RelevanceMonitor(model, methods=("lrp",), region=7, steps=4),
                          datamodule=StreamDataModule(build_stream(cfg, model), batch_size=4),
                          return_predictions=False)
    assert out is None and not trainer.predict_loop.predictions
    assert len(stop.frames) == 2 and stop.records()["sample_id"].nunique() == 8


def test_window_accumulator_matches_the_torchmetrics_states_with_non_finite_values():
    from relmon.lightning import MeanCI
    from relmon.scoring import FiniteSums

    values = [torch.tensor([1.0, float("nan"), 2.5]), torch.tensor([float("inf"), -0.5, 4.0, 3.0])]
    plain, metric = FiniteSums(), MeanCI()
    for v in values:
        plain.update(v)
        metric.update(v)
    a, b = plain.mean_ci(), metric.compute()
    assert a == b and a["n"] == 5 and a["nan_count"] == 2
    assert a["mean"] == pytest.approx(2.0) and a["ci_low"] < 2.0 < a["ci_high"]


@pytest.mark.parametrize("dof", [1, 2, 7, 19, 255, 10_000])
def test_t_quantile_is_scipy_stats_t_ppf(dof):
    from scipy.stats import t

    from relmon.scoring import t_quantile

    assert t_quantile(0.95, dof) == pytest.approx(float(t.ppf(0.975, dof)), rel=1e-12)
    assert t_quantile(0.8, dof) == pytest.approx(float(t.ppf(0.9, dof)), rel=1e-12)

