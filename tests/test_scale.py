"""Scaling out: one window over DDP ranks or shard jobs gives one device's results.

Unit level: the shard split, the lazy listing and the selection before decoding, the window summary
computed from records (what rank 0 and ``relmon merge`` do) against the one-process accumulator, and
the refusal of incomplete or mixed runs. End to end, through the real CLI in fresh processes on a
model defined here: a 2-process CPU DDP run (gloo) and a ``--shard 0/2`` + ``--shard 1/2`` + ``relmon
merge`` run each equal the one-process run (records equal after sorting, summary within 1e-9).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = 0.25, 0.35
TINYNET = '''
import torch
from torch import nn


def build(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes),
    )
'''
CLASSES = [str(i) for i in range(10)]
RUN_COLUMNS = ["run_id", "run_time"]
DDP_RTOL = 1e-5  # float32 rounding (a batch's composition changes a sample's forwards by ~1e-7 relative)


# --------------------------------------------------------------------------------------------------
# unit level: shards, listing, selection before decoding


def test_parse_shard_and_its_errors():
    from relmon.runs import parse_shard

    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3 / 8 ") == (3, 8)
    for bad in ("2/2", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="I/N|0 <= I < N"):
            parse_shard(bad)


def test_shards_partition_the_listing_whatever_its_order_and_root():
    from relmon.runs import shard_of

    names = [f"cam{c}/2026-12-03/img_{i:05d}.png" for c in range(3) for i in range(1000)]
    shards = [shard_of(n, 4) for n in names]
    counts = np.bincount(shards, minlength=4)
    assert counts.sum() == len(names)  # every file in exactly one shard
    # balanced: each shard within 5 standard deviations of n/4 (binomial)
    sd = math.sqrt(len(names) * 0.25 * 0.75)
    assert np.all(np.abs(counts - len(names) / 4) < 5 * sd), counts
    # the shard of a file depends on its relative path only: not on the listing order, the OS
    # separator or a leading slash
    assert [shard_of(n, 4) for n in reversed(names)] == shards[::-1]
    assert shard_of("/" + names[7], 4) == shards[7] == shard_of(names[7].replace("/", os.sep), 4)
    assert {shard_of(n, 1) for n in names} == {0}


def test_list_images_equals_fsspec_find_and_stats_only_when_asked(tmp_path):
    import fsspec

    from relmon.data.file_listing import list_images

    for i, rel in enumerate(["a/x1.png", "a/b/x2.JPG", "c/x3.jpeg", "x0.png", "a/notes.txt", "c/d/.hidden.png"]):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i + 1))
    exts = (".png", ".jpg", ".jpeg")
    found = fsspec.filesystem("file").find(str(tmp_path), detail=True)
    expected = sorted(p for p in found if os.path.splitext(p)[1].lower() in exts)
    lazy = list_images(tmp_path, exts)
    assert lazy.paths == expected and lazy.sizes is None and lazy.mtimes is None
    full = list_images(tmp_path, exts, with_info=True)
    assert full.paths == expected
    assert full.sizes.tolist() == [os.stat(p).st_size for p in expected]
    assert full.mtimes.tolist() == [os.stat(p).st_mtime for p in expected]
    assert [full.relative(i) for i in range(len(full))] == [os.path.relpath(p, tmp_path) for p in expected]
    # an fsspec memory:// folder lists the same way
    mem = fsspec.filesystem("memory")
    for rel in ("m/a.png", "m/sub/b.png", "m/c.txt"):
        mem.pipe_file(f"/scale-test/{rel}", b"1")
    listed = list_images("memory://scale-test/m", exts, mtime_of=lambda info, p: 0.0)
    assert listed.paths == ["/scale-test/m/a.png", "/scale-test/m/sub/b.png"]
    assert listed.sizes.tolist() == [1, 1]


def test_selection_before_decoding_equals_the_scorers_selection():
    """select_indices on the ids alone picks exactly the samples the scorer picks from decoded batches."""
    from relmon.data.file_listing import select_indices
    from relmon.data.streams import TensorStream, stream_loader
    from relmon.scoring import BatchScorer, WindowAccumulator

    x = torch.rand(60, 1, 8, 8)
    ids = [f"img_{i:03d}.png" for i in range(60)]
    stream = TensorStream(x, ids=ids, window_size=25)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    scorer = BatchScorer(model, sample_rate=0.6, max_samples=9, seed=5)
    picked = []
    sink = WindowAccumulator(scorer.methods)
    for batch in stream_loader(stream, batch_size=7):
        picked += [batch["sample_id"][i] for i in scorer.select(batch, sink)]
    chosen = select_indices(ids, stream.window_id, seed=5, sample_rate=0.6, max_samples=9)
    assert [ids[i] for i in chosen] == picked
    assert 0 < len(picked) < 27  # the rate and the cap both bit (3 windows of at most 9)


def test_plan_of_the_shards_partitions_the_plan_of_the_window():
    """Shards split the run's selection (rate, cap) without changing it, and the left-out counts add up."""
    from relmon.data.file_listing import plan_indices
    from relmon.data.streams import TensorStream, window_indices

    stream = TensorStream(torch.zeros(200, 1, 4, 4), ids=[f"cam/{i:04d}.png" for i in range(200)], window_size=80)
    opts = dict(seed=1, sample_rate=0.5, max_samples=30)
    window = window_indices(stream)["default:80"]
    full, left = plan_indices(stream, candidates=window, **opts)
    assert len(full) == 30 and left == 80 - 30 and all(80 <= i < 160 for i in full)
    parts = [plan_indices(stream, candidates=window, shard=(k, 3), **opts) for k in range(3)]
    assert sorted(i for idx, _ in parts for i in idx) == full
    assert all(idx for idx, _ in parts) and sum(n for _, n in parts) == left
    assert plan_indices(stream)[0] == list(range(200))  # no sampling, no window: everything


# --------------------------------------------------------------------------------------------------
# unit level: the summary from records, parts


def _scored(random_fraction=0.5):
    from relmon.data.streams import TensorStream, stream_loader
    from relmon.jobs.runner import run_plain
    from relmon.models import Preprocessing, attach_preprocessing
    from relmon.scoring import BatchScorer

    torch.manual_seed(1)
    model = attach_preprocessing(
        torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 10 * 10, 5)),
        Preprocessing(mean=(0.5,), std=(0.25,)))
    stream = TensorStream(torch.rand(30, 1, 12, 12), ids=[f"s{i:02d}" for i in range(30)],
                          preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)))
    scorer = BatchScorer(model, methods=("lrp", "sensitivity"), region=3, steps=5, seed=2,
                         random_fraction=random_fraction)
    records, sink = run_plain(scorer, stream_loader(stream, batch_size=8))
    return records, sink, scorer


def test_summary_from_records_equals_the_accumulator_in_any_row_order():
    from relmon.runs import summary_from_records

    records, sink, scorer = _scored()
    expected = sink.summary()
    assert 0 < (records["method"] == "random").sum() < 30  # the baseline is on a subset: pairing matters
    shuffled = records.sample(frac=1.0, random_state=0)
    got = summary_from_records(shuffled, scorer.methods, inputs=expected["_inputs"])
    assert got.keys() == expected.keys()
    for method, entry in expected.items():
        for key, value in entry.items():
            assert got[method][key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), (method, key)


def test_parts_round_trip_and_incomplete_or_mixed_runs_are_refused(tmp_path):
    from relmon.runs import RunPartsError, part_manifest, read_run, write_part

    records, _, scorer = _scored(random_fraction=1.0)
    ids = sorted(records["sample_id"].unique())
    halves = [records[records["sample_id"].isin(ids[k::3])] for k in range(3)]
    settings = {"region": 3, "steps": 5}

    def manifest(k, **over):
        base = dict(run_id="r1", run_time=1.0, part=k, parts=3, kind="shard", model="m", model_version="1",
                    stream="s", settings=settings, inputs={"seen": 10, "bad": k}, errors={"read_error": k})
        return part_manifest(**{**base, **over})

    run = tmp_path / "r1"
    for k in (0, 2):
        write_part(halves[k], run, manifest(k))
    with pytest.raises(RunPartsError, match=r"incomplete run 'r1'.*1 of 3 parts missing.*--shard 1/3"):
        read_run(run)
    write_part(halves[1], run, manifest(1, settings={"region": 3, "steps": 6}))
    with pytest.raises(RunPartsError, match=r"mixed run.*part 1 has settings"):
        read_run(run)
    write_part(halves[1], run, manifest(1))
    merged, manifests = read_run(run)
    assert [m["part"] for m in manifests] == [0, 1, 2]
    assert sorted(merged["sample_id"].unique()) == ids
    expected = records.sort_values(["window_id", "sample_id", "method"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged.drop(columns=RUN_COLUMNS), expected.drop(columns=RUN_COLUMNS))
    assert set(merged["run_id"]) == {"r1"}
    # overlapping shards are refused too
    write_part(halves[0], run, manifest(1))
    with pytest.raises(RunPartsError, match="more than one part"):
        read_run(run)


# --------------------------------------------------------------------------------------------------
# end to end through the CLI


def _run(args, env, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "relmon", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"relmon {args} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny CNN defined here, trained briefly on 16x16 digits; a labelled class-folder tree, an
    unlabelled folder of 37 PNGs (odd: a padding sampler would repeat one), a calibration."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("scale")
    (tmp / "tinynet.py").write_text(TINYNET)
    d = load_digits()
    x = torch.nn.functional.interpolate(torch.from_numpy(d.images / 16.0).float().unsqueeze(1), size=(16, 16),
                                        mode="bilinear", align_corners=False)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    sys.path.insert(0, str(tmp))
    try:
        import tinynet
    finally:
        sys.path.remove(str(tmp))
    model = tinynet.build()
    xs, ys = (u8[:600].float() / 255 - MEAN) / STD, torch.from_numpy(d.target[:600]).long()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(3):
        for i in range(0, 600, 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[i:i + 50]), ys[i:i + 50]).backward()
            opt.step()
    torch.save(model.state_dict(), tmp / "weights.pt")
    for i in range(600, 680):
        folder = tmp / "labelled" / CLASSES[d.target[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i, 0].numpy()).save(folder / f"img_{i:04d}.png")
    for i in range(700, 737):
        sub = tmp / "unlabelled" / f"cam{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i, 0].numpy()).save(sub / f"img_{i:04d}.png")
    config = {
        "model": "tinynet:build", "checkpoint": str(tmp / "weights.pt"),
        "preprocessing": {"mean": [MEAN], "std": [STD], "low": 0.0, "high": 1.0},
        "classes": CLASSES, "model_name": "tiny", "calibration_data": str(tmp / "labelled"),
        "input": str(tmp / "unlabelled"), "stream": "cams", "channels": 1, "methods": ["lrp"], "region": 4,
        "steps": 6, "batch_size": 8, "calibration_n": 40, "calibration_shifts": ["gaussian_noise"],
        "calibration_severities": [4], "estimators": ["average_confidence", "atc"], "random_fraction": 0.7,
        "sample_rate": 0.7,  # some inputs left out whatever the tmp path the ids hold (0.7^37 ~ 2e-6)
    }
    (tmp / "relmon.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)]), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    _run(["calibrate", "--config", str(tmp / "relmon.yaml"), "--out", str(tmp / "cal"), "--json"], env)
    base = ["monitor", "--config", str(tmp / "relmon.yaml"), "--calibration", str(tmp / "cal"), "--json"]
    one = _run([*base, "--records", str(tmp / "one")], env)
    return {"tmp": tmp, "env": env, "base": base, "one": json.loads(one.stdout),
            "one_records": _records(tmp / "one")}


def _records(folder: Path) -> pd.DataFrame:
    from relmon.records import read_record_files

    files = sorted(folder.rglob("*.parquet"))
    frame = read_record_files(files).drop(columns=RUN_COLUMNS)
    # window ids are unique per run (relmon.jobs.window_ids): one per run, of stream cams; compared as such
    assert frame["window_id"].nunique() == 1 and frame["window_id"].iloc[0].startswith("cams:"), frame["window_id"]
    frame["window_id"] = "cams:<run>"
    return frame.sort_values(["window_id", "sample_id", "method"]).reset_index(drop=True)


def _same_numbers(a, b, path="", rel=1e-9):
    """Equal structure; numbers within ``rel`` (relative; 1e-12 absolute); NaN/None alike."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for k in a:
            _same_numbers(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (va, vb) in enumerate(zip(a, b, strict=True)):
            _same_numbers(va, vb, f"{path}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is None and b is None or (a is None and math.isnan(b)) or (b is None and math.isnan(a)), path
        else:
            assert a == pytest.approx(b, rel=rel, abs=1e-12, nan_ok=True), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _same_records(got: pd.DataFrame, expected: pd.DataFrame, rtol: float) -> None:
    """The same rows (ids, window, method, model, predicted class, labels: exactly) and the float
    columns within ``rtol``."""
    exact = ["sample_id", "window_id", "method", "model", "model_version", "pred", "label", "correct"]
    pd.testing.assert_frame_equal(got[exact], expected[exact], check_exact=True)
    pd.testing.assert_frame_equal(got.drop(columns=exact), expected.drop(columns=exact), check_exact=False,
                                  rtol=rtol, atol=1e-12)


_SAME_KEYS = ("model", "model_version", "stream", "seen", "scored", "input_errors", "methods",
              "confidence", "estimates", "drift_p_values", "drift_alarm", "accuracy", "default_estimator",
              "estimate_errors")


@pytest.mark.integration
def test_ddp_two_processes_of_the_cli_equal_one_process(project):
    tmp, env = project["tmp"], project["env"]
    light = _run([*project["base"], "--runner", "lightning", "--records", str(tmp / "light")], env)
    ddp = _run([*project["base"], "--runner", "lightning", "--devices", "2", "--strategy", "ddp",
                "--accelerator", "cpu", "--records", str(tmp / "ddp")], env)
    one, single, dist = project["one"], json.loads(light.stdout), json.loads(ddp.stdout)
    assert 0 < one["scored"] < 37 and one["seen"] == 37  # sampling bit, every input counted
    parts = sorted((tmp / "ddp" / "cams").glob("*/part-*.parquet"))
    assert [p.name for p in parts] == ["part-0.parquet", "part-1.parquet"]
    ranks = [set(pd.read_parquet(p)["sample_id"]) for p in parts]
    assert ranks[0] and ranks[1] and not ranks[0] & ranks[1]  # both ranks scored, nothing twice
    # one device, either runner: equal to float rounding
    _same_records(_records(tmp / "light"), project["one_records"], rtol=1e-9)
    for key in _SAME_KEYS:
        _same_numbers(single[key], one[key], key)
    # two ranks: the same rows; a sample's float32 forwards depend on the composition of the batch it
    # is packed in (CPU kernels), which the split changes: values within float32 rounding
    _same_records(_records(tmp / "ddp"), project["one_records"], rtol=DDP_RTOL)
    for key in _SAME_KEYS:
        _same_numbers(dist[key], one[key], key, rel=DDP_RTOL)
    # rank 0 wrote the window's summary file in the run folder; it holds what --json printed
    doc = json.loads((parts[0].parent / "summary.json").read_text())
    assert doc["run"]["parts"] == 2 and doc["run"]["kind"] == "ddp"
    assert doc["estimates"] == dist["estimates"]  # --json gives {"estimate", "lower", "upper"} as the file does
    assert dist["window_ids"] == doc["window_ids"] and len(dist["window_ids"]) == 1
    assert doc["drift"]["p_values"] == dist["drift_p_values"]


@pytest.mark.integration
def test_shards_then_merge_equal_one_run_and_an_incomplete_merge_is_refused(project):
    tmp, env, base = project["tmp"], project["env"], project["base"]
    shard_args = [*base, "--records", str(tmp / "shards"), "--run-id", "nightly-1"]
    run = tmp / "shards" / "cams" / "nightly-1"
    _run([*shard_args, "--shard", "0/2"], env)
    # one shard written: the merge is refused, naming the missing shard
    refused = _run(["merge", str(run), "--calibration", str(tmp / "cal"), "--json"], env, check=False)
    assert refused.returncode == 3, refused.stderr
    assert "incomplete run 'nightly-1'" in refused.stderr and "--shard 1/2" in refused.stderr
    assert not (run / "summary.json").exists()
    _run([*shard_args, "--shard", "1/2"], env)
    assert sorted(p.name for p in run.iterdir()) == ["part-0.parquet", "part-1.parquet"]  # parts only
    prom = tmp / "merged.prom"
    merged = _run(["merge", str(run), "--calibration", str(tmp / "cal"), "--json", "--textfile", str(prom)], env)
    out = json.loads(merged.stdout)
    assert out["window_ids"] == ["cams:run-nightly-1"]  # the shards' window: named by the shared run id
    _same_records(_records(run), project["one_records"], rtol=DDP_RTOL)
    for key in _SAME_KEYS:
        _same_numbers(out[key], project["one"][key], key, rel=DDP_RTOL)
    assert json.loads((run / "summary.json").read_text())["run"]["kind"] == "shard"
    text = prom.read_text()
    assert f'relmon_run_samples{{model="tiny",model_version="{out["model_version"]}",stream="cams"}} ' \
           f'{float(out["scored"])}' in text
    # a shard of another configuration in the same run folder: refused as a mixed run
    _run([*shard_args, "--shard", "1/2", "--sample-rate", "0.8"], env)
    mixed = _run(["merge", str(run), "--calibration", str(tmp / "cal")], env, check=False)
    assert mixed.returncode == 3 and "mixed run" in mixed.stderr and "settings" in mixed.stderr


# --------------------------------------------------------------------------------------------------
# the Kubernetes Indexed Job


def test_k8s_indexed_job_runs_one_shard_per_index_then_one_merge(tmp_path):
    """deploy/k8s/sharded-cronjob.yaml: pod k < SHARDS runs shard k/SHARDS, pod SHARDS merges the run
    named after the Job; the script is run here with a stand-in ``relmon`` that prints its arguments,
    which the real CLI parser then accepts."""
    from relmon.cli import build_parser
    from relmon.config import config_from_dict
    from relmon.runs import parse_shard

    docs = {d["metadata"]["name"]: d for f in (ROOT / "deploy" / "k8s").glob("*.yaml")
            for d in yaml.safe_load_all(f.read_text())}
    job = docs["relmon-monitor-sharded"]["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    shards = int(env["SHARDS"]["value"])
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == shards + 1
    assert env["RELMON_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    cm = docs[pod["volumes"][0]["configMap"]["name"]]
    cfg = config_from_dict(yaml.safe_load(cm["data"]["relmon.yaml"]))
    assert job["activeDeadlineSeconds"] > cfg.run_timeout_seconds

    fake = tmp_path / "bin" / "relmon"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    seen_shards, merges = [], 0
    for index in range(shards + 1):
        run_env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": str(index),
                   "SHARDS": str(shards), "RELMON_RUN_ID": "relmon-monitor-sharded-29112026"}
        out = subprocess.run([*container["command"], *container["args"]], env=run_env, capture_output=True,
                             text=True, timeout=30, check=True).stdout.splitlines()
        args = build_parser().parse_args(out)
        assert args.config == "/etc/relmon/relmon.yaml" and args.run_id == "relmon-monitor-sharded-29112026"
        if args.command == "monitor":
            seen_shards.append(parse_shard(args.shard))
            assert args.only_new is False  # only-new state is per stream, not per shard
        else:
            assert args.command == "merge" and index == shards and args.wait_seconds > 0
            merges += 1
    assert seen_shards == [(k, shards) for k in range(shards)] and merges == 1


# --------------------------------------------------------------------------------------------------
# configuration: what cannot be split is refused before any work


@pytest.mark.parametrize("args, message", [
    (["monitor", "--devices", "2"], r"devices: 2 and num_nodes: 1 need runner: lightning.*fix: set runner: lightning"),
    (["monitor", "--shard", "0/2", "--records", "R"], r"shard needs run_id.*fix: pass --run-id"),
    (["monitor", "--shard", "0/2", "--run-id", "x"], r"records is not set; fix: set records"),
    (["monitor", "--shard", "2/2"], r"'shard': expected I/N with 0 <= I < N"),
    (["monitor", "--strategy", "ddp_spawn"], r"'strategy': expected auto or ddp.*not supported"),
    (["monitor", "--run-id", "../x"], r"'run_id': expected a name of letters"),
    (["serve", "--runner", "lightning", "--devices", "2", "--http-port", "0"],
     r"relmon serve runs each window on one device.*--devices N' \(DDP\) or sharded jobs"),
    (["merge", "--calibration", "C"], r"relmon merge needs the run folder: pass RUN, or records and run_id"),
])
def test_scale_out_settings_are_checked_with_a_fix(args, message, capsys):
    from relmon.cli import main

    assert main(args) == 3
    err = capsys.readouterr().err
    assert re.search(message, err), err


@pytest.mark.integration
def test_calibrate_on_two_ddp_processes_equals_one_process(project):
    """``relmon calibrate --devices 2``: rank 0 writes the calibration fitted on every rank's records."""
    from relmon.jobs.calibration import load_calibration
    from relmon.records import read_record_files

    tmp, env = project["tmp"], project["env"]
    ddp = _run(["calibrate", "--config", str(tmp / "relmon.yaml"), "--out", str(tmp / "cal_ddp"), "--json",
                "--runner", "lightning", "--devices", "2", "--strategy", "ddp"], env)
    meta = json.loads(ddp.stdout)  # printed once, by rank 0
    one, two = load_calibration(tmp / "cal"), load_calibration(tmp / "cal_ddp")
    assert meta["window_accuracy"] == one.meta["window_accuracy"] == two.meta["window_accuracy"]
    assert two.meta["default_estimator"] == one.meta["default_estimator"]
    key = ["window_id", "sample_id", "method"]
    a, b = (read_record_files([tmp / name / "records.parquet"]).sort_values(key).reset_index(drop=True)
            .drop(columns=RUN_COLUMNS) for name in ("cal", "cal_ddp"))
    assert len(a) == len(b) > 0
    _same_records(b, a, rtol=DDP_RTOL)
    for name in one.estimators:  # the fitted estimators predict the same on the same window
        got = two.estimators[name].predict(a.assign(window_id="w")).iloc[-1]
        want = one.estimators[name].predict(a.assign(window_id="w")).iloc[-1]
        assert got["estimate"] == pytest.approx(want["estimate"], rel=DDP_RTOL, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# the collective steps, on a real 2-process gloo group


def _collective_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from relmon.distributed import broadcast, check_same, gather, rank_and_world

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = {"rank_world": rank_and_world(), "gather": gather(f"r{rank}"), "broadcast": broadcast(f"b{rank}")}
        check_same("same listing", "the inputs")
        try:
            check_same(f"listing seen by rank {rank}", "the window's inputs")
            result["differ"] = None
        except ValueError as err:
            result["differ"] = str(err)
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_ranks_gather_agree_and_refuse_different_listings(tmp_path):
    import torch.multiprocessing as mp

    from relmon.distributed import check_same, gather, rank_and_world

    assert rank_and_world() == (0, 1) and gather("x") == ["x"]  # without a group: one process
    check_same("anything", "the inputs")
    mp.start_processes(_collective_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2,
                       start_method="spawn")
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for rank, res in enumerate(results):
        assert res["rank_world"] == [rank, 2]
        assert res["gather"] == ["r0", "r1"] and res["broadcast"] == "b0"
        assert "rank(s) [1] differ from rank 0" in res["differ"] and "fix: run again" in res["differ"]


@pytest.mark.integration
def test_fewer_inputs_than_ranks_or_shards(project):
    """One image, two ranks: the padding sampler gives rank 1 a repeat, which is dropped (Lightning's own
    predict sampler refuses a rank without an item). One image, two shards: the empty shard's part
    still completes the run."""
    tmp, env = project["tmp"], project["env"]
    one_image = tmp / "one_image"
    one_image.mkdir()
    first = sorted((tmp / "unlabelled").rglob("*.png"))[0]
    (one_image / first.name).write_bytes(first.read_bytes())
    # every sample gets the random baseline (random_fraction 0.7 hashes the path, which holds the tmp folder)
    args = [*project["base"], "--input", str(one_image), "--sample-rate", "1", "--random-fraction", "1"]
    plain = json.loads(_run([*args, "--records", str(tmp / "one_image_plain")], env).stdout)
    ddp = json.loads(_run([*args, "--runner", "lightning", "--devices", "2", "--records", str(tmp / "one_image_ddp")],
                          env).stdout)
    assert ddp["seen"] == ddp["scored"] == plain["scored"] == 1
    parts = sorted((tmp / "one_image_ddp").rglob("part-*.parquet"))
    assert [len(pd.read_parquet(p)) for p in parts] == [2, 0]  # lrp + random rows on rank 0; rank 1: the repeat, dropped
    _same_records(_records(tmp / "one_image_ddp"), _records(tmp / "one_image_plain"), rtol=DDP_RTOL)
    for key in _SAME_KEYS:
        _same_numbers(ddp[key], plain[key], key, rel=DDP_RTOL)
    for k in (0, 1):
        _run([*args, "--records", str(tmp / "one_image_shards"), "--run-id", "r1", "--shard", f"{k}/2"], env)
    run = tmp / "one_image_shards" / "cams" / "r1"
    merged = json.loads(_run(["merge", str(run), "--calibration", str(tmp / "cal"), "--json"], env).stdout)
    assert sorted(len(pd.read_parquet(p)) for p in run.glob("part-*.parquet")) == [0, 2]
    for key in _SAME_KEYS:
        _same_numbers(merged[key], plain[key], key, rel=DDP_RTOL)
