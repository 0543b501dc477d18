"""``relmon report`` / ``relmon trend``: the trend table's numbers on constructed records, the HTML page
on records and a calibration made by the real jobs (self-contained, images decode and are not blank,
estimates and drift shown), and one headless-Chromium check of the page."""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from relmon.records import make_records, write_records
from relmon.report.html import SECTIONS
from relmon.report.trend import RecordsFolderError, load_records, trend_table

# --------------------------------------------------------------------------------------------------
# constructed records: exact values


def _window(window_id, aopc, aopc_random, score0, labels, preds, entropy, confidence):
    """Records of one window: one lrp row and one random row per input."""
    n = len(aopc)
    ids = [f"{window_id}-{i}" for i in range(n)]
    common = dict(sample_id=ids * 2, window_id=window_id, model="m", model_version="v1",
                  pred=list(preds) * 2, confidence=list(confidence) * 2, softmax_entropy=0.1, margin=0.2,
                  label=list(labels) * 2, score0=list(score0) * 2)
    return make_records(
        **common,
        method=["lrp:epsilon_plus_flat"] * n + ["random"] * n,
        aopc=list(aopc) + list(aopc_random),
        aopc_rel=[a / s for a, s in zip(aopc, score0, strict=True)]
        + [a / s for a, s in zip(aopc_random, score0, strict=True)],
        entropy_bits=list(entropy) + [None] * n,
    )


@pytest.fixture()
def constructed(tmp_path):
    folder = tmp_path / "records"
    # window "b" is written first (older file), "a" second: the table must follow time, not names
    b = _window("b", aopc=[2.0, 4.0], aopc_random=[1.0, 1.0], score0=[4.0, 8.0], labels=[-1, -1],
                preds=[0, 1], entropy=[5.0, 7.0], confidence=[0.5, 0.7])
    a = _window("a", aopc=[1.0, 2.0, 3.0], aopc_random=[0.5, 0.5, 2.0], score0=[2.0, 2.0, 2.0],
                labels=[0, 1, 2], preds=[0, 1, 0], entropy=[3.0, 4.0, 5.0], confidence=[0.9, 0.8, 0.7])
    pb = write_records(b, folder / "day1" / "b.parquet")
    pa_ = write_records(a, folder / "day2" / "a.parquet")
    os.utime(pb, (1_700_000_000, 1_700_000_000))
    os.utime(pa_, (1_700_003_600, 1_700_003_600))
    return folder


def test_trend_table_exact_values_and_time_order(constructed):
    table = trend_table(load_records(constructed))
    assert table["window"].tolist() == ["b", "a"]  # time order (file times), not name order
    b, a = table.iloc[0], table.iloc[1]
    assert (b["n"], a["n"]) == (2, 3)
    assert b["time"] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert a["aopc"] == pytest.approx(2.0)
    assert a["aopc_rel"] == pytest.approx(1.0)  # mean of 0.5, 1.0, 1.5
    assert a["aopc_minus_random"] == pytest.approx(np.mean([0.5, 1.5, 1.0]))
    assert b["aopc_minus_random"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert a["entropy_bits"] == pytest.approx(4.0)
    assert a["confidence"] == pytest.approx(0.8)
    assert a["accuracy"] == pytest.approx(2 / 3)  # preds 0,1,0 vs labels 0,1,2
    assert math.isnan(b["accuracy"]) and b["n_labelled"] == 0  # unlabelled: no accuracy, not 0
    # 90 % interval of a's aopc_rel: mean ± 1.645 * sd / sqrt(n)
    half = 1.6448536269514722 * np.std([0.5, 1.0, 1.5], ddof=1) / math.sqrt(3)
    assert a["aopc_rel_lower"] == pytest.approx(1.0 - half)
    assert a["aopc_rel_upper"] == pytest.approx(1.0 + half)


def test_load_records_skips_foreign_parquet_and_names_the_fix(constructed, tmp_path):
    pd.DataFrame({"x": [1, 2]}).to_parquet(constructed / "not_records.parquet")
    with pytest.warns(UserWarning, match="not_records.parquet: not a records file"):
        records = load_records(constructed)
    assert sorted(records["window_id"].unique()) == ["a", "b"]  # the real records are all kept
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordsFolderError, match="no record files under .*fix: pass the folder"):
        load_records(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "missing")


def test_trend_cli_writes_csv_and_png(constructed, tmp_path, capsys):
    from relmon.cli import main

    csv, png = tmp_path / "t.csv", tmp_path / "t.png"
    assert main(["trend", str(constructed), "--csv", str(csv), "--figure", str(png)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\bb\b.*\n.*\ba\b", out)  # b's row printed before a's
    table = pd.read_csv(csv)
    assert table["window"].tolist() == ["b", "a"]
    assert table["aopc"].tolist() == pytest.approx([3.0, 2.0])
    _check_png(png.read_bytes())


def test_cli_errors_exit_3_with_the_problem(tmp_path, capsys):
    from relmon.cli import main

    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert main(["trend", str(tmp_path)]) == 3
    assert "no record files" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_worst_samples_and_per_class_table_exact_values(constructed):
    from relmon.report.samples import per_class_table, worst_samples

    records = load_records(constructed)
    worst = worst_samples(records, "lrp:epsilon_plus_flat", k=3)
    # gaps: a-0 0.5, a-1 1.5, a-2 1.0, b-0 1.0, b-1 3.0 (ties by window, then sample id)
    assert worst["lowest AOPC gap"]["sample_id"].tolist() == ["a-0", "a-2", "b-0"]
    assert worst["lowest AOPC gap"]["gap"].tolist() == pytest.approx([0.5, 1.0, 1.0])
    # confidences: a .9 .8 .7, b .5 .7
    assert worst["lowest confidence"]["sample_id"].tolist() == ["b-0", "a-2", "b-1"]
    table = per_class_table(records, "lrp:epsilon_plus_flat", classes=["cat", "dog", "eel"])
    assert table["predicted class"].tolist() == ["0 cat", "1 dog"]
    assert table["inputs"].tolist() == [3, 2] and table["share"].tolist() == pytest.approx([0.6, 0.4])
    assert table["confidence"].tolist() == pytest.approx([0.7, 0.75])
    assert table["AOPC − random"].tolist() == pytest.approx([2.5 / 3, 4.5 / 2])
    # labelled inputs only (b is unlabelled): class 0 holds a-0 (right) and a-2 (a 2): 0.5; class 1 a-1: 1.0
    assert table["accuracy (labelled)"].tolist() == pytest.approx([0.5, 1.0])


def test_curves_are_drawn_over_the_share_of_the_image_perturbed():
    from relmon.report.html import perturbed_share

    # the default protocol on 28x28: 8 of the 49 4x4 regions, 16.3 % of the image (the paper's ~16 %)
    share = perturbed_share(8, 28, 28, 4)
    assert share[0] == 0 and share[-1] == pytest.approx(8 * 16 / 784) and share[4] == pytest.approx(4 * 16 / 784)
    # 10x10 with region 4: regions 4x4 (4 of them), 4x2 (4), 2x2 (1); the whole image after all 9
    share = perturbed_share(9, 10, 10, 4)
    assert share[3] == pytest.approx(48 / 100) and share[-1] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# the HTML page on real records and a real calibration


def _check_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    arr = np.asarray(img.convert("L"), dtype=float)
    assert arr.std() > 5.0, "image is blank"
    return img


def _embedded_images(page: str) -> list[Image.Image]:
    return [_check_png(base64.b64decode(b)) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def _assert_self_contained(page: str) -> None:
    for attr, value in re.findall(r'\b(src|href)\s*=\s*["\']([^"\']*)["\']', page, flags=re.I):
        if attr.lower() == "href" and value.startswith("#"):
            continue  # the table of contents: links within the page
        assert value.startswith("data:"), f"{attr}={value[:60]!r} is not embedded"
        assert "//" not in value.split(",")[0]
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script|@import|url\(", page, flags=re.I)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """A calibration and three monitored windows (clean, noise, strong contrast) from the real jobs."""
    from relmon.config import MonitorConfig
    from relmon.jobs import calibrate, run_monitor

    root = tmp_path_factory.mktemp("monitored")
    small = dict(methods=("lrp",), batch_size=64)
    calibrate(MonitorConfig(calibration_n=32, calibration_shifts=("gaussian_noise", "contrast"),
                            calibration_severities=(2, 5), **small), root / "cal")
    for i, (shift, sev) in enumerate([(None, 3), ("gaussian_noise", 2), ("contrast", 5)]):
        run_monitor(MonitorConfig(n=32, shift=shift, severity=sev, stream=f"w{i}", records=str(root / "records"),
                                  calibration=str(root / "cal"), **small))
    return root


@pytest.fixture(scope="module")
def report(monitored):
    from relmon.cli import main

    out = monitored / "report.html"
    assert main(["report", str(monitored / "records"), "--calibration", str(monitored / "cal"),
                 "--model", "fmnist_cnn", "--examples", "4", "--out", str(out)]) == 0
    return out


def test_report_is_self_contained_with_every_section(report, monitored):
    page = report.read_text()
    _assert_self_contained(page)
    for section in ("summary", "heatmaps", "curves", "trend", "drift", "validation"):
        assert f'<section id="{section}">' in page
    images = _embedded_images(page)
    assert len(images) == 4  # heatmap grid, curves, AOPC distributions, trend
    assert re.search(r"recomputed for [5-8] example inputs \([5-8] worst inputs re-read", page)
    from relmon.jobs import load_calibration

    for name in load_calibration(monitored / "cal").estimators:
        assert f"<td>{name}</td>" in page  # one row per estimator in the estimates table
    for window in ("w0:0", "w1:0", "w2:0"):
        assert f"<td>{window}</td>" in page
    nav = page.split('<nav class="toc">')[1].split("</nav>")[0]
    assert re.findall(r'href="#(\w+)"', nav) == list(SECTIONS)


def _section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">')[1].split("</section>")[0]


def _rows(section: str) -> list[list[str]]:
    return [[c.strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr, flags=re.S)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", section, flags=re.S)]


def test_report_calibration_validation_is_a_table(report, monitored):
    from relmon.jobs import load_calibration

    cal = load_calibration(monitored / "cal")
    section = _section(report.read_text(), "validation")
    assert "{&#x27;" not in section and "{'" not in section and "<pre>" not in section  # no raw dict
    summary_table, per_type_table = re.findall(r"<table.*?</table>", section, flags=re.S)[:2]
    header, *rows = _rows(summary_table)
    assert header[:4] == ["estimator", "MAE", "worst MAE (one held-out type)", "coverage of the interval"]
    expected = cal.meta["validation"]["summary"]
    assert [r[0] for r in rows] == [e["estimator"] for e in expected]  # best first, as validated
    assert [r[1] for r in rows] == [f"{e['mae']:.3f}" for e in expected]
    assert [r[3] for r in rows] == [f"{e['coverage']:.3f}" for e in expected]
    # the per-held-out-shift-type table: one column per shift type of the calibration
    header, *rows = _rows(per_type_table)
    assert sorted(header[1:]) == ["contrast", "gaussian_noise"] and len(rows) == len(expected)
    # issue 18: the chosen estimator's coverage and width per held-out shift type, uncovered types marked
    validation = cal.meta["validation"]
    coverage_table = next(t for t in re.findall(r"<table.*?</table>", section, flags=re.S)
                          if f"held-out shift type ({validation['chosen']})" in t)
    header, *rows = _rows(coverage_table)
    mine = [r for r in validation["per_shift_type"] if r["estimator"] == validation["chosen"]]
    assert [r[0] for r in rows] == [m["held_out"] for m in mine]
    assert [r[header.index("coverage")] for r in rows] == [f"{m['coverage']:.3f}" for m in mine]
    assert [r[0] for r in rows if r[-1] == "unreliable (uncovered)"] == validation["unreliable_under"]
    assert ("Estimates unreliable under" in section) == bool(validation["unreliable_under"])


def test_report_lists_the_worst_inputs_from_the_records(report, monitored):
    records = load_records(monitored / "records")
    lrp = records[records["method"] != "random"].set_index(["window_id", "sample_id"])
    rnd = records[records["method"] == "random"].set_index(["window_id", "sample_id"])
    gap = (lrp["aopc"] - rnd["aopc"]).sort_values(kind="stable")
    section = _section(report.read_text(), "heatmaps")
    table = section.split("<h3>lowest AOPC gap</h3>")[1].split("</table>")[0]
    listed = [(r[0], r[1]) for r in _rows(table)[1:]]
    assert len(listed) == 4
    # the four lowest gaps, computed here from the records with pandas
    assert sorted(float(x) for x in gap.iloc[:4]) == pytest.approx(
        sorted(float(gap.loc[w, s]) for w, s in listed), abs=5e-4)
    assert {r[2].split()[1] for r in _rows(table)[1:]} <= set(
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle"])
    classes = _rows(_section(report.read_text(), "classes"))
    assert classes[0][:3] == ["predicted class", "inputs", "share"]
    assert sum(int(r[1]) for r in classes[1:]) == len(lrp)


def test_report_drift_alarm_on_the_strong_shift_only(report):
    page = report.read_text()
    drift = page.split('<section id="drift">')[1].split("</section>")[0]
    rows = {}
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", drift, flags=re.S):
        cells = [c.strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr, flags=re.S)]
        rows[cells[0]] = cells
    assert rows["window"][2] == "alarm"
    # the clean window holds the very images of the calibration's reference window: no alarm
    assert rows["w0:0"][2] == "no"
    assert rows["w2:0"][2] == "ALARM"  # contrast at severity 5 halves the accuracy


def test_report_no_images_leaves_out_inputs_and_heatmaps(monitored, tmp_path):
    from relmon.cli import main

    out = tmp_path / "private.html"
    assert main(["report", str(monitored / "records"), "--model", "fmnist_cnn", "--no-images",
                 "--out", str(out)]) == 0
    page = out.read_text()
    _assert_self_contained(page)
    assert 'alt="inputs and heatmaps"' not in page
    assert "Images left out on request (--no-images)" in page
    assert len(_embedded_images(page)) == 2  # AOPC distributions and trend only
    assert "No calibration given" in page


def test_report_on_one_window_file(monitored, tmp_path):
    from relmon.cli import main

    one = sorted((monitored / "records").rglob("*.parquet"))[-1]
    out = tmp_path / "one.html"
    assert main(["report", str(one), "--out", str(out)]) == 0
    page = out.read_text()
    _assert_self_contained(page)
    assert "<td>w2:0</td>" in page and "<td>w0:0</td>" not in page
    assert len(_embedded_images(page)) == 2


# --------------------------------------------------------------------------------------------------
# headless Chromium


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Debian chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    opts = webdriver.ChromeOptions()
    profile = tempfile.mkdtemp(prefix="relmon-chromium-")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1000",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.binary_location = binary
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts), profile


@pytest.mark.integration
def test_report_in_headless_chromium(report, tmp_path):
    from selenium.webdriver.common.by import By

    browser, profile = _chrome()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            browser.get(Path(report).resolve().as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        for section in SECTIONS:
            assert browser.find_element(By.ID, section).is_displayed()
        # nothing wider than the page: wide tables scroll inside their own box
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        body_right = browser.execute_script("return document.body.getBoundingClientRect().right")
        for table in browser.find_elements(By.CSS_SELECTOR, "table.data"):
            box = browser.execute_script(
                "const t = arguments[0], p = t.closest('div.wide') || t; return p.getBoundingClientRect().right",
                table)
            assert box <= body_right + 1
        # every image decoded by the browser; nothing fetched but data: URLs
        assert browser.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert browser.execute_script("return document.images.length") == 4
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith("data:") for u in fetched), fetched
        shot = tmp_path / "shot.png"
        assert browser.save_screenshot(str(shot))
        _check_png(shot.read_bytes())
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
