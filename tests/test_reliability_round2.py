"""Reliability, round 2 (issue 22): one odd file never sinks a window, no hang on special files, no
secret in any output, calibration values range-checked, no forged log line, durable writes.

Real ``relmon`` processes on real files (PNG, FIFO, a symlink to ``/dev/zero``, a non-UTF-8 name), real
sockets on 127.0.0.1; peak memory is the child's ``ru_maxrss`` measured by a wrapper process of its own.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relmon.config import MonitorConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--region", "7", "--steps", "8", "--batch-size", "16"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def relmon(*args: str, timeout: float = 240, cwd=None) -> subprocess.CompletedProcess:
    """``relmon ARGS`` in a process of its own (stdout, stderr as text; killed after ``timeout`` s)."""
    return subprocess.run([sys.executable, "-m", "relmon", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


_PEAK = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[2:], timeout=float(sys.argv[1]), capture_output=True)\n"
    "sys.stdout.buffer.write(p.stdout)\n"
    "sys.stderr.buffer.write(p.stderr)\n"
    "print(f'\\nPEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} RC {p.returncode}')\n"
)


def relmon_peak(*args: str, timeout: float = 240) -> tuple[int, str, str, float]:
    """Run ``relmon ARGS`` under a wrapper process that reports its peak resident set size:
    ``(exit code, stdout, stderr, peak RSS in MiB)``."""
    cmd = [sys.executable, "-c", _PEAK, str(timeout), sys.executable, "-m", "relmon", *args]
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout + 30)
    out, _, tail = p.stdout.rpartition("\nPEAK_RSS_KIB ")
    kib, _, rc = tail.strip().partition(" RC ")
    return int(rc), out, p.stderr, int(kib) / 1024.0


def sample_pngs(folder: Path, n: int, start: int = 0) -> list[Path]:
    from relmon.data import load_sample

    images, _ = load_sample()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.png"
        Image.fromarray(images[i]).save(p)
        out.append(p)
    return out


def summary_json(stdout: str) -> dict:
    return json.loads(stdout)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from relmon.jobs import calibrate

    cfg = MonitorConfig(n=16, region=7, steps=8, batch_size=16, calibration_n=16,
                        calibration_shifts=("gaussian_noise",), calibration_severities=(4,),
                        estimators=("average_confidence", "atc"))
    return calibrate(cfg, tmp_path_factory.mktemp("cal") / "cal")


# --------------------------------------------------------------------------------------------------
# 1. the size every image is brought to comes from the calibration or the model, never from a file


def test_the_first_sorted_file_does_not_set_every_images_size(tmp_path, calibration):
    imgs = tmp_path / "in"
    sample_pngs(imgs, 16)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)).save(imgs / "000.png")
    # the calibration's input_size (28x28): the 300x300 file is resized to it, the window goes on
    p = relmon("monitor", "--input", str(imgs), *FAST, "--calibration", str(calibration.path), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary_json(p.stdout)
    assert (s["seen"], s["scored"], s["input_errors"]) == (17, 17, {})
    # no calibration: the embedded model's declared 28x28; size_policy skip counts the odd file instead
    p = relmon("monitor", "--input", str(imgs), *FAST, "--size-policy", "skip", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary_json(p.stdout)
    assert (s["scored"], s["input_errors"]) == (16, {"size_mismatch": 1})


def test_a_7000px_png_sorted_first_costs_no_more_than_512_mib(tmp_path):
    base, big = tmp_path / "base", tmp_path / "big"
    sample_pngs(base, 16)
    sample_pngs(big, 16)
    huge = np.zeros((7000, 7000), np.uint8)
    huge[::7, :] = 255  # stripes: a 7000x7000 picture in a small file
    Image.fromarray(huge).save(big / "000.png", optimize=True)
    del huge
    assert (big / "000.png").stat().st_size < 1_000_000
    rc0, out0, err0, peak0 = relmon_peak("monitor", "--input", str(base), *FAST, "--json")
    assert rc0 == 0, err0[-3000:]
    rc, out, err, peak = relmon_peak("monitor", "--input", str(big), *FAST, "--json", timeout=180)
    assert rc == 0, err[-3000:]
    s = summary_json(out)
    assert (s["seen"], s["scored"], s["input_errors"]) == (17, 17, {})
    assert peak < peak0 + 512, (peak, peak0)


def test_a_huge_image_is_reduced_before_it_becomes_floats_and_matches_the_full_resize(tmp_path, monkeypatch):
    import torch

    import relmon.data.safe_read as safe_read
    from relmon.data.safe_read import shrink_for
    from relmon.data.streams import ImageFolderStream

    rng = np.random.default_rng(1)
    full = np.kron(rng.integers(0, 255, (28, 28), dtype=np.uint8), np.ones((250, 250), np.uint8))  # 7000x7000
    Image.fromarray(full).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert shrink_for(img, (28, 28)).size == (56, 56)  # reduced by 125 before any float exists
        assert shrink_for(img, (1800, 1800)) is img  # less than 4x larger: left as it is
    seen = []

    def spy(img, target):
        out = shrink_for(img, target)
        seen.append(out.size)
        return out

    monkeypatch.setattr(safe_read, "shrink_for", spy)
    x = ImageFolderStream(tmp_path, target_size=(28, 28))[0]["x"]
    assert seen == [(56, 56)]  # the stream decoded the reduced image
    direct = torch.nn.functional.interpolate(torch.from_numpy(full).float().div(255)[None, None], size=(28, 28),
                                             mode="bilinear", align_corners=False, antialias=True)[0]
    assert x.shape == (1, 28, 28)
    assert float((x - direct).abs().max()) < 0.02  # the same picture as resizing the full image


# --------------------------------------------------------------------------------------------------
# 2. a file name that is not UTF-8


def test_a_non_utf8_file_name_is_scored_under_an_escaped_id_by_monitor_and_serve(tmp_path):
    from relmon.lightning import read_records

    imgs = tmp_path / "in"
    sample_pngs(imgs, 4)
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(os.fsencode(imgs) + b"/x\xff.png")
    rec = tmp_path / "rec"
    p = relmon("monitor", "--input", str(imgs), *FAST, "--records", str(rec), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert summary_json(p.stdout)["scored"] == 5
    ids = set(read_records(rec)["sample_id"])
    assert "x\\xff.png" in ids and len(ids) == 5  # relative to the input root (issue 21), escaped
    p = relmon("serve", "--input", str(imgs), *FAST, "--http-addr", "127.0.0.1", "--http-port", "0",
               "--max-iterations", "1", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    first_run = json.loads(p.stdout.splitlines()[0])
    assert first_run["scored"] == 5 and first_run["input_errors"] == {}


# --------------------------------------------------------------------------------------------------
# 3. special files: FIFO, a link to /dev/zero, a file above max_file_bytes; the run deadline bounds the push


def test_a_fifo_and_a_link_to_dev_zero_are_counted_not_opened(tmp_path):
    base, odd = tmp_path / "base", tmp_path / "odd"
    sample_pngs(base, 4)
    sample_pngs(odd, 4)
    os.mkfifo(odd / "fifo.png")  # opening it for reading would wait for a writer for ever
    os.symlink("/dev/zero", odd / "zero.png")  # endless
    (odd / "big.png").write_bytes(b"\x89PNG" + os.urandom(300_000))
    rc0, _, err0, peak0 = relmon_peak("monitor", "--input", str(base), *FAST, "--json")
    assert rc0 == 0, err0[-3000:]
    t0 = time.monotonic()
    rc, out, err, peak = relmon_peak("monitor", "--input", str(odd), *FAST, "--max-file-bytes", "200000",
                                     "--json", timeout=30)
    assert rc == 0, err[-3000:]
    assert time.monotonic() - t0 < 30
    s = summary_json(out)
    assert (s["scored"], s["input_errors"]) == (4, {"read_error": 3})
    assert "FIFO" in err and "character device" in err and "max_file_bytes=200,000" in err
    assert peak < peak0 + 100, (peak, peak0)


def _silent_server(stop: threading.Event) -> int:
    """A TCP server on 127.0.0.1 that accepts and reads but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    conns = []

    def loop():
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue
        for c in conns:
            c.close()
        sock.close()

    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


def test_run_timeout_seconds_bounds_the_push_to_a_silent_gateway(tmp_path):
    stop = threading.Event()
    port = _silent_server(stop)
    try:
        t0 = time.monotonic()
        p = relmon("monitor", "--n", "16", *FAST, "--pushgateway", f"127.0.0.1:{port}", "--push-timeout", "90",
                   "--push-retries", "0", "--run-timeout-seconds", "12", "--json", timeout=200)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
    assert p.returncode == 4, p.stderr[-3000:]
    assert "run_timeout_seconds" in summary_json(p.stdout)["outputs"]["push"]
    assert elapsed < 75  # start-up + at most 12 s of run; the push alone would wait 90 s


# --------------------------------------------------------------------------------------------------
# 4. a password never shows, whatever it holds


@pytest.mark.parametrize("char,code", [("#", 3), ("/", 3), ("?", 3), ("@", 4)])
def test_a_password_with_a_url_delimiter_never_shows(tmp_path, char, code):
    left, right = "Left9xQ", "Right7yZ"
    p = relmon("monitor", "--n", "4", *FAST, "--pushgateway", f"http://pusher:{left}{char}{right}@127.0.0.1:9/",
               "--push-retries", "0", "--json")
    assert p.returncode == code, p.stderr[-3000:]
    for text in (p.stdout, p.stderr):
        assert left not in text and right not in text
    if code == 3:
        assert "config field 'pushgateway'" in p.stderr and f"{char!r}" in p.stderr and "fix: percent-encode" in p.stderr
        from relmon.config import ConfigError, config_from_dict

        with pytest.raises(ConfigError, match="config field 'pushgateway'") as info:  # when the config loads
            config_from_dict({"pushgateway": f"http://pusher:{left}{char}{right}@127.0.0.1:9/"})
        assert left not in str(info.value) and right not in str(info.value)
    else:
        push = summary_json(p.stdout)["outputs"]["push"]  # the credentials went to the Authorization header
        assert push.startswith("FAILED: could not push to the Pushgateway at 'http://127.0.0.1:9/'"), push


# --------------------------------------------------------------------------------------------------
# 5. calibration values


def _rewrite_manifest(folder: Path) -> None:
    from relmon.jobs.calibration import MANIFEST_FILE, _files_of, _sha256

    files = {rel: _sha256(folder / rel) for rel in _files_of(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": "relmon-calibration-manifest", "files": files}))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: m["window_accuracy"].update(clean=math.nan), r"field 'window_accuracy\.clean' must be a finite "
                                                               r"number in \[0, 1\].*got nan"),
        (lambda m: m["window_accuracy"].update(clean="0.9"), r"field 'window_accuracy\.clean'.*got '0\.9'"),
        (lambda m: m["window_accuracy"].update(clean=7.5), r"field 'window_accuracy\.clean'.*got 7\.5"),
        (lambda m: m.update(created=1e15), r"field 'created' \(1000000000000000\.0\) lies in the future"),
        (lambda m: m.update(default_estimator="oracle"), r"field 'default_estimator' must name one of"),
        (lambda m: m.update(steps=0), r"field 'steps' must be a positive integer, got 0"),
        (lambda m: m.update(input_size=[0, 28]), r"field 'input_size' must be \[height, width\]"),
        (lambda m: m.update(fraction=2.0), r"field 'fraction' must be null or a number in \(0, 1\], got 2\.0"),
    ],
)
def test_calibration_values_out_of_range_are_refused_naming_file_and_field(calibration, tmp_path, edit, needle):
    from relmon.jobs import load_calibration
    from relmon.jobs.calibration import CalibrationError

    folder = tmp_path / "cal"
    load_calibration(calibration.path).save(folder)
    meta = json.loads((folder / "calibration.json").read_text())
    edit(meta)
    (folder / "calibration.json").write_text(json.dumps(meta))
    _rewrite_manifest(folder)
    with pytest.raises(CalibrationError, match=r"calibration\.json: " + needle + r".*fix: re-run 'relmon calibrate"):
        load_calibration(folder)


# --------------------------------------------------------------------------------------------------
# 6. log injection


def test_a_name_with_a_newline_cannot_forge_a_log_line(tmp_path):
    imgs = tmp_path / "in\nrelmon: INFO forged-folder"
    sample_pngs(imgs, 4)
    (imgs / "bad\nrelmon: INFO forged-file.png").write_bytes(b"\x89PNG broken")
    p = relmon("monitor", "--input", str(imgs), *FAST, "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert summary_json(p.stdout)["input_errors"] == {"decode_error": 1}
    forged = [line for line in p.stderr.splitlines() if line.startswith("relmon: INFO forged")]
    assert not forged, p.stderr
    assert "bad\\nrelmon: INFO forged-file.png" in p.stderr  # named, escaped
    assert "in\\nrelmon: INFO forged-folder" in p.stderr


# --------------------------------------------------------------------------------------------------
# 7. durable writes; temporaries of killed writes removed by every run


@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync and rename, in order: ("fsync", is_dir, inode) / ("replace", src, dst)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", stat.S_ISDIR(st.st_mode), st.st_ino))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        events.append(("replace", str(src), str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_then_renamed(events, target: Path) -> bool:
    """The file now at ``target`` was fsynced before its rename, and its folder after it."""
    ino, folder_ino = target.stat().st_ino, target.parent.stat().st_ino
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and Path(e[2]) == target]
    if not renames:
        return False
    r = renames[-1]
    before = ("fsync", False, ino) in events[:r]
    after = ("fsync", True, folder_ino) in events[r:]
    return before and after


def test_records_state_and_calibration_are_fsynced_file_and_folder(tmp_path, fsyncs, calibration):
    from relmon.jobs.only_new import SeenFiles
    from relmon.records import read_record_files, write_records

    frame = read_record_files([calibration.path / "reference.parquet"])
    path = write_records(frame, tmp_path / "r" / "a.parquet")
    assert _synced_then_renamed(fsyncs, path)
    seen = SeenFiles(tmp_path / "r" / "state.json")
    seen.pending = {"x.png": [1, 2.0]}
    seen.commit()
    assert _synced_then_renamed(fsyncs, tmp_path / "r" / "state.json")
    fsyncs.clear()
    from relmon.jobs import load_calibration

    out = load_calibration(calibration.path).save(tmp_path / "cal")
    assert ("fsync", False, (out / "calibration.json").stat().st_ino) in fsyncs
    assert ("fsync", True, (out / "estimators").stat().st_ino) in fsyncs  # its entries
    last_rename = max(i for i, e in enumerate(fsyncs) if e[0] == "replace")
    assert ("fsync", True, tmp_path.stat().st_ino) in fsyncs[last_rename:]  # the rename into place


def test_stale_temporaries_are_removed_by_a_run_that_ends_with_an_empty_window(tmp_path, capsys):
    from relmon.cli import main

    folder = tmp_path / "rec" / "default"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".20260101_x.parquet.k1.tmp", folder / ".20260101_y.parquet.k2.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    # with sample_rate 0.01 none of the 3 ids is selected: exit 6
    rc = main(["monitor", "--n", "3", *FAST, "--sample-rate", "0.01", "--records", str(tmp_path / "rec")])
    assert rc == 6, capsys.readouterr().err
    assert not stale.exists() and fresh.exists()  # a young one may belong to a writer still running


# --------------------------------------------------------------------------------------------------
# 8. smaller items


def test_json_prints_the_partial_summary_on_exit_7(tmp_path, capsys):
    from relmon.cli import main
    from relmon.lightning import read_records

    rec = tmp_path / "rec"
    rc = main(["monitor", "--n", "2000", "--steps", "49", "--batch-size", "8", "--records", str(rec),
               "--run-timeout-seconds", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 7, err
    s = json.loads(out)
    n = read_records(rec)["sample_id"].nunique()
    assert s["status"] == "timeout" and s["exit_code"] == 7 and s["scored"] == n and 0 < n < 2000
    assert s["outputs"]["records"] and Path(s["outputs"]["records"]).is_file()
    assert "run_timeout_seconds (1 s) passed" in s["error"]["message"] and s["error"]["code"] == 7


def test_json_prints_the_partial_summary_on_exit_5(tmp_path):
    rec = tmp_path / "rec"
    proc = subprocess.Popen(
        [sys.executable, "-m", "relmon", "monitor", "--n", "2000", "--steps", "49", "--batch-size", "8",
         "--records", str(rec), "--json"],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "scoring" in line or not line:
                break
        time.sleep(6)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 5, err[-3000:]
    s = json.loads(out)
    assert s["status"] == "interrupted" and s["exit_code"] == 5
    assert s["error"] == {"code": 5, "message": "stopped by SIGTERM", "fix": None}
    assert s["scored"] % 8 == 0 and s["scored"] < 2000


def test_threads_has_an_upper_bound(capsys):
    from relmon.cli import main

    assert main(["monitor", "--n", "4", *FAST, "--threads", "100000"]) == 3
    err = capsys.readouterr().err
    assert "config field 'threads'" in err and "at most 1024" in err


class _Gateway(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(self.path)
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_gateway():
    servers = []

    def start(status: int):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
        server.requests, server.status = [], status
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_basic_auth_over_plain_http_warns_once_and_401_is_not_retried(stub_gateway, caplog):
    from prometheus_client import CollectorRegistry

    from relmon.export import PushError, push
    from relmon.jobs import serve

    ok = stub_gateway(200)
    cfg = MonitorConfig(n=4, region=7, steps=8, batch_size=16, interval_seconds=0.01, max_iterations=3,
                        http_addr="127.0.0.1", http_port=0, pushgateway=f"http://u:pw@127.0.0.1:{ok.server_address[1]}")
    with caplog.at_level("WARNING"):
        result = serve(cfg, registry=CollectorRegistry())
    assert result.runs == 3 and result.failures == 0 and len(ok.requests) == 3
    assert sum("over plain HTTP" in r.getMessage() for r in caplog.records) == 1
    refused = stub_gateway(401)
    with pytest.raises(PushError, match=r"after 1 attempt\(s\).*401.*not retried"):
        push(CollectorRegistry(), f"http://u:pw@127.0.0.1:{refused.server_address[1]}", retries=3, backoff=0.01)
    assert len(refused.requests) == 1


def test_two_stream_names_never_share_a_folder(tmp_path):
    from relmon.jobs.only_new import stream_folder

    names = [".", "..", "_", "a/b", "a_b", "a b", "a%20b", "%2E", ".hidden", "default", "cam-1", "é", "x" * 300,
             "x" * 299 + "y", "../escape"]
    folders = [stream_folder(tmp_path, n) for n in names]
    assert len(set(folders)) == len(names)
    for f in folders:
        assert f.parent == tmp_path and f.name not in (".", "..") and not f.name.startswith(".")
        assert len(f.name.encode()) < 255
    assert stream_folder(tmp_path, "default").name == "default" and stream_folder(tmp_path, "cam-1").name == "cam-1"
