"""Reliability: nothing lost, no silent wrong numbers, bounded and stoppable.

Real processes (two concurrent ``relmon monitor``; SIGTERM sent to a scoring one), a real trickling
socket server on 127.0.0.1, real files; no mocks of the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_sample_pngs
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from relmon.config import ConfigError, MonitorConfig
from relmon.lightning import read_records
from relmon.records import (
    RECORD_COLUMNS,
    read_record_files,
    remove_stale_temporaries,
    write_records,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(n=16, region=7, steps=8, batch_size=16)


def relmon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "relmon", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def signal_after(proc: subprocess.Popen, pipe: str, marker: str, delay: float, sig: int) -> tuple[str, str, float]:
    """Wait for a line holding ``marker`` on ``proc``'s ``pipe`` ("stdout"/"stderr"), sleep ``delay``, send
    ``sig`` and wait for the exit: ``(stdout, stderr, seconds from the signal to the exit)``. The process
    is killed if anything fails on the way."""
    try:
        deadline = time.monotonic() + 300
        lines = []
        while time.monotonic() < deadline:
            line = getattr(proc, pipe).readline()
            lines.append(line)
            if marker in line or not line:
                break
        assert any(marker in x for x in lines), lines
        time.sleep(delay)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        return out, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from relmon.jobs import calibrate

    cfg = MonitorConfig(
        **FAST,
        calibration_n=16,
        calibration_shifts=("gaussian_noise",),
        calibration_severities=(4,),
        estimators=("average_confidence", "atc"),
    )
    return calibrate(cfg, tmp_path_factory.mktemp("cal") / "cal")


# --------------------------------------------------------------------------------------------------
# records: unique names, concurrent writers, old files, temporaries


def _frame(n: int, run_id: str | None = None) -> pd.DataFrame:
    from relmon.records import make_records

    f = make_records(
        sample_id=[str(i) for i in range(n)], window_id="w", model="m", model_version="v", pred=np.zeros(n, int),
        confidence=np.full(n, 0.9), softmax_entropy=np.full(n, 0.1), margin=np.full(n, 0.5), method="lrp",
        score0=np.ones(n), aopc=np.full(n, 0.3), aopc_rel=np.full(n, 0.3),
    )
    if run_id is not None:
        f["run_id"], f["run_time"] = run_id, 1.0
    return f


def test_concurrent_writers_of_one_path_never_fail_and_readers_never_see_a_partial_file(tmp_path):
    target = tmp_path / "r.parquet"
    frames = [_frame(200 + k) for k in range(2)]
    errors: list[BaseException] = []
    bad_reads = []
    done = threading.Event()

    def writer(k: int) -> None:
        try:
            for _ in range(40):
                write_records(frames[k], target)
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    def reader() -> None:
        while not done.is_set():
            if target.exists():
                try:
                    assert len(read_record_files([target])) in (200, 201)
                except Exception as err:  # noqa: BLE001
                    bad_reads.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join()
    assert errors == [] and bad_reads == []
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]  # no temporary left behind


def test_old_record_files_without_run_columns_are_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from relmon.records import RECORD_SCHEMA, to_arrow

    old_schema = pa.schema([RECORD_SCHEMA.field(c) for c in RECORD_COLUMNS if c not in ("run_id", "run_time")])
    table = to_arrow(_frame(5)).select(old_schema.names).cast(old_schema)
    pq.write_table(table, tmp_path / "records-old.parquet")
    write_records(_frame(3, run_id="abc"), tmp_path / "stream" / "new.parquet")
    frame = read_records(tmp_path)
    assert len(frame) == 8 and list(frame.columns) == list(RECORD_COLUMNS)
    assert frame["run_id"].isna().sum() == 5 and (frame["run_id"] == "abc").sum() == 3


def test_stale_temporaries_are_ignored_by_readers_and_removed(tmp_path):
    write_records(_frame(4, "r1"), tmp_path / "s" / "a.parquet")
    stale = tmp_path / "s" / ".a.parquet.x1y2.tmp"
    stale.write_bytes(b"PAR1 half written")
    young = tmp_path / "s" / ".b.parquet.z3.tmp"
    young.write_bytes(b"PAR1")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert len(read_records(tmp_path)) == 4  # the half-written file is not read
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and young.exists()  # a young one may belong to a running writer


# --------------------------------------------------------------------------------------------------
# config: every number finite and in range


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("interval_seconds", "inf", "not a finite number"),
        ("interval_seconds", float("inf"), "not a finite number"),
        ("push_backoff", 1e300, "at most 3600"),
        ("push_timeout", "nan", "not a finite number"),
        ("push_retries", 10**6, "at most 100"),
        ("run_timeout_seconds", -1, "positive number"),
        ("drift_alpha", float("nan"), "not a finite number"),
    ],
)
def test_numeric_fields_must_be_finite_and_in_range(field, value, needle):
    with pytest.raises(ConfigError, match=rf"config field '{field}'.*{needle}.*fix: set {field}"):
        MonitorConfig().with_overrides({field: value})


def test_only_new_needs_a_folder_input_and_a_records_folder(tmp_path):
    with pytest.raises(ConfigError, match="only_new: true needs input to be a folder"):
        MonitorConfig(only_new=True, records=str(tmp_path)).validated()
    with pytest.raises(ConfigError, match="records is not set; fix: set records"):
        MonitorConfig(only_new=True, input=str(tmp_path)).validated()


# --------------------------------------------------------------------------------------------------
# calibration: written as a unit, verified on load


def _rewrite_manifest(folder: Path) -> None:
    from relmon.jobs.calibration import MANIFEST_FILE, MANIFEST_FORMAT, _files_of, _sha256

    files = {rel: _sha256(folder / rel) for rel in _files_of(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}))


def test_calibration_save_replaces_as_a_unit_and_cleans_killed_writes(calibration, tmp_path):
    import shutil

    from relmon.jobs import load_calibration

    target = tmp_path / "cal"
    cal = load_calibration(calibration.path)
    cal.save(target)
    # a save killed halfway leaves a temporary sibling; the target stays intact and loads
    half = tmp_path / ".cal.tmp-killed"
    (half / "estimators").mkdir(parents=True)
    (half / "estimators" / "atc.json").write_text("{")
    assert load_calibration(target).meta["model"] == cal.meta["model"]
    cal.meta["note"] = "second"
    cal.save(target)  # replaces the old calibration and removes the leftover
    assert not half.exists() and load_calibration(target).meta["note"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal"]
    # killed between the two renames: the old one is aside, the error says where
    aside = tmp_path / ".cal.old-x" / "calibration"
    aside.parent.mkdir()
    shutil.move(str(target), str(aside))
    with pytest.raises(FileNotFoundError, match=r"interrupted while replacing it.*\.cal\.old-x"):
        load_calibration(target)
    # a non-empty folder that is not a calibration is never replaced
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a calibration; refusing to replace it"):
        cal.save(other)
    assert (other / "keep.txt").read_text() == "x"


def test_a_mixed_calibration_folder_is_refused(calibration, tmp_path):
    import shutil

    from relmon.jobs import load_calibration
    from relmon.jobs.calibration import CalibrationError

    a, b = tmp_path / "a", tmp_path / "b"
    cal = load_calibration(calibration.path)
    cal.save(a)
    cal.meta["created"] = cal.meta["created"] + 1
    cal.save(b)
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy(b / "calibration.json", mixed / "calibration.json")  # old estimators, new metadata
    with pytest.raises(CalibrationError, match=r"\['calibration.json'\] do not match the sha256"):
        load_calibration(mixed)
    (mixed / "manifest.json").unlink()
    with pytest.raises(CalibrationError, match="has no manifest.json"):
        load_calibration(mixed)
    shutil.copytree(a, tmp_path / "extra")
    (tmp_path / "extra" / "estimators" / "doc.json").write_text("{}")
    with pytest.raises(CalibrationError, match=r"files its manifest does not list: \['estimators/doc.json'\]"):
        load_calibration(tmp_path / "extra")


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: [m], "must hold a JSON object.*got a list"),
        (lambda m: {k: v for k, v in m.items() if k != "estimators"}, "lacks the field 'estimators'"),
        (lambda m: {**m, "region": "seven"}, "field 'region' must be of type int, got 'seven'"),
        (lambda m: {**m, "created": "yesterday"}, "field 'created' must be of type number"),
        (lambda m: {**m, "estimators": {"atc": "../../etc/passwd"}}, "must name a file inside the folder"),
    ],
)
def test_malformed_calibration_json_gives_a_clear_error(calibration, tmp_path, edit, needle):
    from relmon.jobs import load_calibration
    from relmon.jobs.calibration import CalibrationError

    folder = tmp_path / "cal"
    load_calibration(calibration.path).save(folder)
    meta = json.loads((folder / "calibration.json").read_text())
    (folder / "calibration.json").write_text(json.dumps(edit(meta)))
    _rewrite_manifest(folder)
    with pytest.raises(CalibrationError, match=needle + r".*fix: re-run 'relmon calibrate"):
        load_calibration(folder)


def test_missing_reference_is_named(calibration, tmp_path):
    from relmon.jobs import load_calibration
    from relmon.jobs.calibration import CalibrationError

    folder = tmp_path / "cal"
    load_calibration(calibration.path).save(folder)
    (folder / "reference.parquet").unlink()
    with pytest.raises(CalibrationError, match=r"incomplete: \['reference.parquet'\] missing"):
        load_calibration(folder)
    _rewrite_manifest(folder)
    with pytest.raises(CalibrationError, match=r"drift reference .*reference.parquet.* cannot be read"):
        load_calibration(folder)


# --------------------------------------------------------------------------------------------------
# outputs: every one tried, failures named, bounded push


class _Gateway(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def test_unwritable_outputs_are_named_and_the_other_outputs_still_happen(tmp_path, capsys):
    """Tests run as root (chmod does not stop root): a path under a regular FILE fails for anyone."""
    from relmon.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _Gateway.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rc = main(["monitor", "--n", "16", "--region", "7", "--steps", "8", "--batch-size", "16",
                   "--records", str(blocker / "records"), "--textfile", str(blocker / "m.prom"),
                   "--pushgateway", f"127.0.0.1:{server.server_port}", "--push-retries", "0"])
    finally:
        server.shutdown()
        server.server_close()
    out, err = capsys.readouterr()
    assert rc == 4
    assert f"could not write the records to '{blocker / 'records'}'" in err
    assert f"could not write the textfile to '{blocker / 'm.prom'}'" in err
    assert "fix: make the location writable" in err
    assert "16 of 16 inputs scored" in out  # the summary is printed
    assert len(_Gateway.bodies) == 1 and b"relmon_last_success_timestamp_seconds" in _Gateway.bodies[0]


def _trickling_server(stop: threading.Event) -> int:
    """An HTTP server on 127.0.0.1 that answers one byte every 0.5 s, never finishing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)

    def handle(conn):
        with conn:
            conn.settimeout(0.2)
            try:
                conn.recv(65536)
            except OSError:
                pass
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([b]))
                except OSError:
                    return
                time.sleep(0.5)

    def loop():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
        sock.close()

    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


def test_a_trickling_pushgateway_cannot_hold_the_run_past_its_deadline(tmp_path):
    from relmon.jobs import JobError, MonitorJob

    stop = threading.Event()
    port = _trickling_server(stop)
    try:
        cfg = MonitorConfig(**FAST, pushgateway=f"127.0.0.1:{port}", push_timeout=1.0, push_retries=1,
                            push_backoff=0.5, textfile=str(tmp_path / "m.prom"))
        job = MonitorJob(cfg, registry=CollectorRegistry())
        job.compute()  # warm up, so the timing below is the outputs'
        t0 = time.monotonic()
        with pytest.raises(JobError, match=r"push deadline of 2\.5 s") as info:
            job.run()
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
    # the socket timeout (1 s per read) alone would let the 0.5 s trickle run for ~14 hours
    assert elapsed < 2.5 + 30  # 2.5 s deadline + scoring 16 images on a busy CI machine
    assert (tmp_path / "m.prom").is_file()  # the textfile was still written
    assert info.value.summary.scored == 16


# --------------------------------------------------------------------------------------------------
# empty windows


def test_an_empty_window_exits_6_without_advancing_the_last_success(calibration, tmp_path, capsys):
    from relmon.cli import main

    prom = tmp_path / "m.prom"
    # with sample_rate 0.01 none of these 3 ids is selected (selection_hash >= 0.01)
    from relmon.lightning.monitor import selection_hash

    assert all(selection_hash(0, str(i)) >= 0.01 for i in range(3))
    rc = main(["monitor", "--n", "3", "--region", "7", "--steps", "8", "--sample-rate", "0.01",
               "--calibration", str(calibration.path), "--textfile", str(prom)])
    out, err = capsys.readouterr()
    assert rc == 6
    assert "empty window, nothing scored" in err and "last-success time was not advanced" in err
    assert "no calibration" not in out and "empty window" in out
    text = prom.read_text()  # the outputs are still written (input counts), but no success time
    assert metric_value(text, "relmon_last_success_timestamp_seconds") == 0
    assert metric_value(text, "relmon_run_duration_seconds") > 0


# --------------------------------------------------------------------------------------------------
# only-new scoring and serve


def test_only_new_scores_each_file_once_and_keeps_every_run(tmp_path):
    from relmon.jobs import MonitorJob
    from relmon.jobs.monitor import EmptyWindowError

    imgs = tmp_path / "in"
    write_sample_pngs(imgs, 6)
    (imgs / "broken.png").write_bytes(b"not a png")
    cfg = MonitorConfig(**{**FAST, "n": None}, input=str(imgs), records=str(tmp_path / "rec"), only_new=True)
    first = MonitorJob(cfg, registry=CollectorRegistry()).run()
    assert first.scored == 6 and sum(first.input_errors.values()) == 1
    with pytest.raises(EmptyWindowError, match=r"no new or changed input since the last successful run"):
        MonitorJob(cfg, registry=CollectorRegistry()).run()
    write_sample_pngs(imgs, 2, start=10)
    third = MonitorJob(cfg, registry=CollectorRegistry()).run()
    assert third.scored == 2 and third.input_errors == {}
    recs = read_records(tmp_path / "rec")
    assert recs["run_id"].nunique() == 2
    assert recs.drop_duplicates("sample_id")["sample_id"].nunique() == 8
    assert len(list((tmp_path / "rec" / "default").glob("*.parquet"))) == 2
    # a deleted file leaves the state (it does not grow forever); a changed file is scored again
    state = tmp_path / "rec" / "default" / ".relmon-state.json"
    (imgs / "img0000.png").unlink()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(imgs / "img0001.png")
    os.utime(imgs / "img0001.png", (time.time() + 5, time.time() + 5))
    fourth = MonitorJob(cfg, registry=CollectorRegistry()).run()
    assert fourth.scored == 1
    assert not any(k.endswith("img0000.png") for k in json.loads(state.read_text())["files"])


def test_serve_counts_unchanged_inputs_once(tmp_path):
    from relmon.jobs import serve

    imgs = tmp_path / "in"
    write_sample_pngs(imgs, 5)
    (imgs / "broken.png").write_bytes(b"\x89PNG broken")
    registry = CollectorRegistry()
    added = []

    def on_run(summary):
        if not added:
            added.extend(write_sample_pngs(imgs, 1, start=20))  # one new file after the first run

    cfg = MonitorConfig(**{**FAST, "n": None}, input=str(imgs), http_addr="127.0.0.1", http_port=0,
                        interval_seconds=0.05, max_iterations=4)
    result = serve(cfg, registry=registry, on_run=on_run)
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    assert result.runs == 4 and result.failures == 0 and result.empty == 2
    assert metric_value(text, "relmon_samples_processed_total") == 6  # 5 + 1, not 5 + 6 + 6 + 6
    assert metric_value(text, "relmon_input_errors_total") == 1


def test_serve_watch_polls_an_fsspec_listing(tmp_path):
    import fsspec

    from relmon.jobs import serve

    fs = fsspec.filesystem("memory")
    from relmon.data import load_sample

    images, _ = load_sample()

    def put(i):
        import io

        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="PNG")
        fs.pipe(f"/relmon-watch-test/img{i}.png", buf.getvalue())

    for i in range(3):
        put(i)
    stop = threading.Event()
    timer = threading.Timer(120, stop.set)  # safety net only
    timer.start()
    runs = []

    def on_run(summary):
        runs.append(summary)
        if len(runs) == 1:
            put(7)

    cfg = MonitorConfig(**{**FAST, "n": None}, input="memory://relmon-watch-test", watch=True,
                        http_addr="127.0.0.1", http_port=0, interval_seconds=0.05, max_iterations=2)
    try:
        result = serve(cfg, stop=stop, on_run=on_run, registry=CollectorRegistry())
    finally:
        timer.cancel()
        fs.rm("/relmon-watch-test", recursive=True)
    assert not stop.is_set()  # ended by max_iterations, i.e. the new file triggered the second run
    assert result.runs == 2 and [s.scored for s in runs] == [3, 1]


# --------------------------------------------------------------------------------------------------
# real processes: concurrency and signals


def test_two_concurrent_monitor_processes_keep_both_records(tmp_path):
    rec, prom = tmp_path / "rec", tmp_path / "m.prom"
    args = ["monitor", "--n", "16", "--region", "7", "--steps", "8", "--batch-size", "16",
            "--records", str(rec), "--textfile", str(prom)]
    procs = [subprocess.Popen(relmon_cmd(*args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    frame = read_records(rec)
    assert frame["run_id"].nunique() == 2
    assert frame.groupby("run_id")["sample_id"].nunique().tolist() == [16, 16]
    assert len(list(rec.rglob("*.parquet"))) == 2 and not list(rec.rglob("*.tmp"))
    assert metric_value(prom.read_text(), "relmon_samples_processed_total") == 16


def test_sigterm_stops_monitor_within_seconds_and_keeps_finished_batches(tmp_path):
    rec = tmp_path / "rec"
    proc = subprocess.Popen(
        relmon_cmd("monitor", "--n", "2000", "--steps", "49", "--batch-size", "8", "--records", str(rec),
                   "--textfile", str(tmp_path / "m.prom")),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # a few batches of 8 finish (about 1 s each) before the signal
    _, err, stopped_after = signal_after(proc, "stderr", "scoring sample", 8, signal.SIGTERM)
    assert proc.returncode == 5, err[-2000:]
    assert "stopped by SIGTERM" in err and "records of the finished batches" in err
    assert stopped_after < 15  # one batch of 8 images, not the remaining ~2000
    frame = read_records(rec)
    n = frame["sample_id"].nunique()
    assert 0 < n < 2000 and n % 8 == 0  # whole batches only
    assert not (tmp_path / "m.prom").exists()  # an interrupted run exports nothing


def test_concurrent_only_new_runs_score_each_file_once(tmp_path):
    """The records folder's lock: two runs at once on the same folder; each file is scored by one."""
    from relmon.jobs import MonitorJob
    from relmon.jobs.monitor import EmptyWindowError

    imgs = tmp_path / "in"
    write_sample_pngs(imgs, 8)
    cfg = MonitorConfig(**{**FAST, "n": None}, input=str(imgs), records=str(tmp_path / "rec"), only_new=True)
    jobs = [MonitorJob(cfg, registry=CollectorRegistry()) for _ in range(2)]
    results: list = []

    def go(job):
        try:
            results.append(job.run().scored)
        except EmptyWindowError:
            results.append(0)

    threads = [threading.Thread(target=go, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 8]  # the second waited for the lock, then found nothing new
    assert len(read_records(tmp_path / "rec").drop_duplicates("sample_id")) == 8


def test_sigint_stops_serve_while_it_waits(tmp_path):
    proc = subprocess.Popen(
        relmon_cmd("serve", "--n", "16", "--region", "7", "--steps", "8", "--batch-size", "16",
                   "--http-addr", "127.0.0.1", "--http-port", "0", "--interval-seconds", "600"),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err, stopped_after = signal_after(proc, "stdout", "relmon monitor:", 0.5, signal.SIGINT)
    assert proc.returncode == 0, err[-2000:]
    assert "served 1 run(s), 0 failed" in out
    assert stopped_after < 10  # not the 600 s interval


def test_soak_memory_stays_flat_over_a_sampled_stream():
    """5,000 images with 2 % sampling through the job's scoring pass (benchmarks/bench_soak.py runs
    100,000): RSS growth after the first thousand stays under 100 MiB."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "benchmarks" / "bench_soak.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.soak(images=5000, sample_rate=0.02)
    assert out["scored"] > 50 and len(out["trace"]) == 6
    assert out["rss_growth_mib"] < 100, out["trace"]


def test_run_timeout_stops_between_batches_keeps_finished_records_and_exits_7(tmp_path, capsys):
    from relmon.cli import main

    rec = tmp_path / "rec"
    # 2,000 images cannot be scored within the deadline on any machine (64 might be, on a quiet one)
    rc = main(["monitor", "--n", "2000", "--steps", "49", "--batch-size", "8", "--records", str(rec),
               "--textfile", str(tmp_path / "m.prom"), "--run-timeout-seconds", "1"])
    err = capsys.readouterr().err
    assert rc == 7, err
    assert "run_timeout_seconds (1 s) passed" in err and "records of the finished batches" in err
    n = read_records(rec)["sample_id"].nunique()
    assert 0 < n < 2000 and n % 8 == 0
    assert not (tmp_path / "m.prom").exists()


def test_sigterm_stops_serve_during_a_run_and_exits_5(tmp_path):
    rec = tmp_path / "rec"
    proc = subprocess.Popen(
        relmon_cmd("serve", "--n", "2000", "--steps", "49", "--batch-size", "8", "--records", str(rec),
                   "--http-addr", "127.0.0.1", "--http-port", "0"),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err, stopped_after = signal_after(proc, "stderr", "scoring sample", 4, signal.SIGTERM)
    assert proc.returncode == 5, err[-2000:]
    assert "run stopped: stopped by SIGTERM" in err and "served 1 run(s)" in out
    assert stopped_after < 15
    assert 0 < read_records(rec)["sample_id"].nunique() < 2000


def test_stale_textfile_temporaries_of_killed_writes_are_removed(tmp_path):
    from relmon.jobs.monitor import _remove_stale_textfile_temporaries

    prom = tmp_path / "m.prom"
    old, young, other = tmp_path / "m.prom.123.456", tmp_path / "m.prom.7.8", tmp_path / "m.prom.bak"
    for p in (old, young, other):
        p.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert _remove_stale_textfile_temporaries(str(prom)) == [str(old)]
    assert young.exists() and other.exists()


def test_waiting_for_the_lock_is_bounded_and_stoppable(tmp_path):
    from relmon.jobs.only_new import StateError, folder_lock
    from relmon.jobs.signals import RunInterrupted, run_deadline

    with folder_lock(tmp_path):
        with pytest.raises(StateError, match=r"another relmon run holds .*\.relmon\.lock"):
            with folder_lock(tmp_path, timeout=0.3):
                pass
        t0 = time.monotonic()
        with pytest.raises(RunInterrupted, match="run_timeout_seconds"):
            with run_deadline(0.3), folder_lock(tmp_path):
                pass
        assert time.monotonic() - t0 < 5
    with folder_lock(tmp_path):  # released
        pass


def test_a_records_write_that_runs_out_of_space_leaves_no_partial_file(tmp_path):
    """A real failing write: RLIMIT_FSIZE (16 KiB) makes the kernel refuse the records file midway
    (EFBIG, as a full disk refuses with ENOSPC); the textfile (~14 KiB; the records ~26 KiB) is still written."""
    import resource

    from relmon.jobs import JobError, MonitorJob

    cfg = MonitorConfig(n=64, region=7, steps=8, batch_size=64, records=str(tmp_path / "rec"),
                        textfile=str(tmp_path / "m.prom"))
    job = MonitorJob(cfg, registry=CollectorRegistry())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        with pytest.raises(JobError, match=r"could not write the records to .*File too large") as info:
            job.run()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.summary.scored == 64
    assert list((tmp_path / "rec").rglob("*")) == [tmp_path / "rec" / "default"]  # no partial, no temporary
    assert metric_value((tmp_path / "m.prom").read_text(), "relmon_samples_processed_total") == 64


def test_atomic_write_removes_its_temporary_when_the_writer_fails(tmp_path):
    from relmon.records import atomic_write

    def half(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    (tmp_path / "r.parquet").write_bytes(b"previous")
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "r.parquet", half)
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]
    assert (tmp_path / "r.parquet").read_bytes() == b"previous"  # the old file is untouched


def test_an_estimator_that_cannot_score_the_window_publishes_nothing_and_loses_nothing(tmp_path, calibration,
                                                                                       caplog):
    """COT and NuclearNorm refuse a window that predicts a class calibration never saw (a ValueError that
    names the class): the job keeps the records and the other estimators, and that estimator's gauges are
    removed rather than left at an earlier run's value."""
    from relmon.jobs import MonitorJob

    class Refuses:
        def predict(self, records):
            raise ValueError("class 7 was never predicted in calibration (K=5); fix: re-run 'relmon calibrate'")

    cfg = MonitorConfig(**FAST, calibration=str(calibration.path), records=str(tmp_path / "rec"))
    registry = CollectorRegistry()
    job = MonitorJob(cfg, registry=registry)
    first = job.run(outputs=False)
    assert "atc" in first.estimates and not first.estimate_errors
    assert registry.get_sample_value("relmon_estimated_accuracy_ratio",
                                     {**job.metrics.base, "estimator": "atc"}) is not None
    job.calibration.estimators["atc"] = Refuses()
    with caplog.at_level("WARNING", logger="relmon.jobs"):
        second = job.run(outputs=False)
    assert "atc" not in second.estimates and "class 7" in second.estimate_errors["atc"]
    assert "average_confidence" in second.estimates and second.scored == 16
    assert "estimator atc cannot score this window" in caplog.text
    assert "atc" in second.table() and "cannot score this window" in second.table()
    for name in ("relmon_estimated_accuracy_ratio", "relmon_estimated_accuracy_lower_ratio",
                 "relmon_estimated_accuracy_upper_ratio"):
        assert registry.get_sample_value(name, {**job.metrics.base, "estimator": "atc"}) is None, name
        assert registry.get_sample_value(name, {**job.metrics.base, "estimator": "average_confidence"}) is not None
    assert read_records(tmp_path / "rec")["run_id"].nunique() == 2  # both runs' records written


def test_records_of_parts_equal_the_concatenated_records_of_each_part():
    """The scorer builds a batch's records once (make_records_of_parts): the same frame, dtypes and
    nulls as concatenating one make_records per method and the random order."""
    import torch

    from relmon.records import make_records, make_records_of_parts

    n, m = 5, 3
    common = dict(sample_id=[f"s{i}" for i in range(n)], window_id="w", model="m", model_version="v",
                  pred=torch.tensor([0, 1, 2, 1, 0]), confidence=torch.rand(n, dtype=torch.float64),
                  softmax_entropy=torch.rand(n), margin=np.linspace(0, 1, n), label=torch.tensor([0, -1, 2, 3, -1]))
    lrp = dict(common, method="lrp", score0=torch.rand(n), aopc=torch.rand(n), aopc_rel=torch.rand(n),
               aopc_early=torch.rand(n), aopc_lerf=None, entropy_bits=torch.rand(n),
               png_bytes=torch.arange(n) + 100, jpeg_bytes=torch.arange(n) + 200, gini=torch.rand(n))
    sub = {k: (v[:m] if not isinstance(v, str) else v) for k, v in common.items()}
    rnd = dict(sub, method="random", score0=torch.rand(m), aopc=torch.rand(m), aopc_rel=torch.rand(m),
               aopc_early=torch.rand(m))
    expected = pd.concat([make_records(**lrp), make_records(**rnd)], ignore_index=True)
    got = make_records_of_parts(lrp, rnd)
    pd.testing.assert_frame_equal(got, expected)
    assert got["label"].isna().sum() == 3 and got["png_bytes"].isna().sum() == m
    pd.testing.assert_frame_equal(make_records_of_parts(lrp), make_records(**lrp))


def test_a_non_finite_estimate_removes_the_estimators_gauges():
    """In a long-lived registry (serve) a NaN estimate must not leave the previous window's value exposed."""
    from relmon.export.metrics import RelmonMetrics

    registry = CollectorRegistry()
    metrics = RelmonMetrics("m", "v", "s", registry=registry)
    labels = {**metrics.base, "estimator": "atc"}
    metrics.set_estimate("atc", 0.9, 0.8, 0.95)
    metrics.set_estimate("doc", 0.7, 0.6, 0.8)
    assert registry.get_sample_value("relmon_estimated_accuracy_ratio", labels) == 0.9
    metrics.set_estimate("atc", float("nan"), 0.8, 0.95)
    for name in ("relmon_estimated_accuracy_ratio", "relmon_estimated_accuracy_lower_ratio",
                 "relmon_estimated_accuracy_upper_ratio"):
        assert registry.get_sample_value(name, labels) is None, name
    assert registry.get_sample_value("relmon_estimated_accuracy_ratio", {**metrics.base, "estimator": "doc"}) == 0.7


def test_folder_lock_says_when_it_had_to_wait(tmp_path):
    """serve hands its listing to the run; a run that waited for another's lock lists again (on_wait)."""
    import fcntl

    from relmon.jobs.only_new import LOCK_FILE, folder_lock

    calls = []
    with folder_lock(tmp_path, on_wait=lambda: calls.append("waited")):
        pass
    assert calls == []
    holder = open(tmp_path / LOCK_FILE, "a+")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    got = threading.Event()

    def take():
        with folder_lock(tmp_path, on_wait=lambda: calls.append("waited")):
            got.set()

    t = threading.Thread(target=take)
    t.start()
    time.sleep(0.35)
    assert not got.is_set()
    fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    holder.close()
    t.join(10)
    assert got.is_set() and calls == ["waited"]  # once, however long the wait


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_an_accelerator_this_machine_lacks_is_a_config_error_before_any_work(tmp_path, capsys):
    from relmon.cli import main

    rc = main(["monitor", "--n", "4", "--accelerator", "gpu", "--records", str(tmp_path / "rec")])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "accelerator 'gpu': no CUDA device is available; fix: set accelerator: cpu (or auto)" in err
    assert "Traceback" not in err and not (tmp_path / "rec").exists()
