"""Class probabilities in the records (schema version 2) and the estimators that read them: COT, the
nuclear norm and MaNo (issue 18). Each test names the mutation it catches."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from relmon.analysis import COT, MaNo, NuclearNorm
from relmon.analysis.estimators import _Data, mano_criterion, mano_score
from relmon.records import (
    PROBS_TOP_K,
    RECORD_COLUMNS,
    RECORD_SCHEMA,
    RecordSchemaError,
    class_probabilities,
    make_records,
    read_record_files,
    to_arrow,
    write_records,
)


def _records(window, probs, labels=None, classes=None, model="synth"):
    probs = [np.asarray(p, dtype=float) for p in probs]
    n = len(probs)
    conf = np.array([p.max() for p in probs])
    pred = np.array([int(np.argmax(p)) if classes is None else int(classes[i][0]) for i, p in enumerate(probs)])
    return make_records(sample_id=[f"{window}#{i}" for i in range(n)], window_id=window, model=model,
                        model_version="v1", pred=pred, confidence=conf, softmax_entropy=np.zeros(n),
                        margin=np.zeros(n), label=np.asarray(labels if labels is not None else [-1] * n),
                        method="random", score0=1.0, aopc=0.0, probs=probs,
                        probs_classes=classes if classes is not None else [None] * n)


def test_probabilities_column_full_and_top_k():
    """K = 10: the whole softmax vector, classes null; K = 30: the 20 largest, descending, with their
    classes, and 1 − their sum is the mass of the other 10. Both survive a Parquet round trip."""
    torch.manual_seed(0)
    small, large = torch.randn(3, 10), torch.randn(3, 30)
    out = class_probabilities(small)
    assert out["probs_classes"] == [None] * 3
    np.testing.assert_allclose(np.stack(out["probs"]), torch.softmax(small.double(), 1).numpy(), rtol=1e-12)
    out = class_probabilities(large)
    p = torch.softmax(large.double(), 1).numpy()
    for row, vals, cls in zip(p, out["probs"], out["probs_classes"], strict=True):
        assert len(vals) == len(cls) == PROBS_TOP_K
        np.testing.assert_allclose(vals, np.sort(row)[::-1][:PROBS_TOP_K], rtol=1e-12)
        np.testing.assert_allclose(row[cls], vals, rtol=1e-12)
        assert 1 - vals.sum() == pytest.approx(np.sort(row)[:10].sum(), abs=1e-12)


def test_old_schema_file_reads_with_null_probabilities_and_newer_version_is_refused(tmp_path):
    """A file in schema version 1 (no probs columns, no version metadata) still reads, with the new
    columns null; a file claiming a newer schema version is refused with the fix."""
    recs = _records("w/0", [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    old_schema = pa.schema([RECORD_SCHEMA.field(c) for c in RECORD_COLUMNS if c not in ("probs", "probs_classes")])
    table = pa.Table.from_pandas(recs[[c for c in RECORD_COLUMNS if c in old_schema.names]], schema=old_schema,
                                 preserve_index=False)
    pq.write_table(table, tmp_path / "old.parquet")
    back = read_record_files([tmp_path / "old.parquet"])
    assert list(back.columns) == list(RECORD_COLUMNS)
    assert back["probs"].isna().all() and back["probs_classes"].isna().all()
    write_records(recs, tmp_path / "new.parquet")
    assert pq.read_schema(tmp_path / "new.parquet").metadata[b"relmon.records.schema_version"] == b"2"
    both = read_record_files([tmp_path / "old.parquet", tmp_path / "new.parquet"])
    assert both["probs"].notna().sum() == 2
    np.testing.assert_allclose(both["probs"].iloc[2], [0.7, 0.2, 0.1])
    future = to_arrow(recs).replace_schema_metadata({b"relmon.records.schema_version": b"9"})
    pq.write_table(future, tmp_path / "future.parquet")
    with pytest.raises(RecordSchemaError, match="schema version 9.*reads versions 1..3.*upgrade relmon"):
        read_record_files([tmp_path / "future.parquet"])


def test_mano_score_by_hand():
    """P = [[1, 0], [0.5, 0.5]]: Σ p⁴ = 1 + 2·0.0625 = 1.125 over N·K = 4 → S = 0.28125^(1/4); Φ by hand.

    Mutations caught: the ℓ2 norm instead of ℓ4, or normalising by N instead of N·K."""
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert mano_score(p) == pytest.approx(0.28125 ** 0.25, rel=1e-12)
    q = np.array([[0.9, 0.1], [0.5, 0.5]])
    assert mano_criterion(q) == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.5)) / 4)


def test_mano_estimator_fits_the_line_and_reads_the_records_probabilities():
    """Windows of two-class probability rows whose accuracy is exactly linear in MaNo's score: the fitted
    line recovers it. Two windows with equal confidences but different non-top classes (K = 3) get
    different MaNo and nuclear-norm scores from ``probs``, and equal ones without ``probs``.

    Mutation caught: ignoring the probs column (vectors rebuilt from confidence): the scores of the two
    windows become equal."""
    windows = []
    for j, top in enumerate((0.6, 0.75, 0.9, 1.0)):
        n = 10
        correct = round(10 * (0.2 + 0.6 * mano_score(np.array([[top, 1 - top, 0.0]] * n))))
        labels = [0] * correct + [1] * (n - correct)
        windows.append(_records(f"s{j}/0", [[top, 1 - top, 0.0]] * n, labels=labels))
    calib = pd.concat(windows, ignore_index=True)
    est = MaNo(conformal=False).fit(calib)
    acc = calib.groupby("window_id")["correct"].mean().astype(float)
    pred = est.predict(calib).set_index("window_id")["estimate"]
    np.testing.assert_allclose(pred.to_numpy(), acc.reindex(pred.index).to_numpy(), atol=0.06)
    a = _records("t/0", [[0.6, 0.4, 0.0]] * 8)
    b = _records("t/1", [[0.6, 0.2, 0.2]] * 8)
    both = pd.concat([a, b], ignore_index=True)
    d = _Data.of(both)
    assert MaNo._window_scores(d, 3)["t/0"] > MaNo._window_scores(d, 3)["t/1"] + 0.01
    assert NuclearNorm._window_norms(d, 3)["t/0"] > NuclearNorm._window_norms(d, 3)["t/1"] + 0.01
    old = _Data.of(both.assign(probs=None, probs_classes=None))
    assert MaNo._window_scores(old, 3)["t/0"] == pytest.approx(MaNo._window_scores(old, 3)["t/1"])


def test_cot_with_true_probabilities_by_hand():
    """Source labels half 0, half 1 (K = 3); target rows p = (0.5, 0.3, 0.2): the cost ‖p − e_y‖_∞ is
    0.5 for y = 0 and 0.7 for y = 1, so the optimal transport cost is 0.5·0.5 + 0.5·0.7 = 0.6 and COT
    says 0.4. With the vector rebuilt from confidence (0.5, 0.25, 0.25) the y = 1 cost is 0.75 → 0.375.

    Mutation caught: ignoring the probs column (0.375 instead of 0.4)."""
    src = _records("clean/0", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] * 5 + [[0.0, 0.0, 1.0]] * 0,
                   labels=[0, 1] * 5)
    src = pd.concat([src, _records("clean/1", [[0.0, 0.0, 1.0]], labels=[2])], ignore_index=True)
    cot = COT(conformal=False).fit(src)
    assert cot.label_distribution_ == pytest.approx([5 / 11, 5 / 11, 1 / 11])
    cot.label_distribution_ = [0.5, 0.5, 0.0]
    tgt = _records("t/0", [[0.5, 0.3, 0.2]] * 4)
    assert cot.predict(tgt)["estimate"].iloc[0] == pytest.approx(0.4)
    assert cot.predict(tgt.assign(probs=None, probs_classes=None))["estimate"].iloc[0] == pytest.approx(0.375)


def test_top_k_rows_spread_the_remaining_mass():
    """A top-2 record of a 4-class calibration: listed classes keep their probabilities, the remaining
    mass 0.2 is spread over the 2 others (0.1 each)."""
    from relmon.analysis.estimators import _probability_matrix

    recs = _records("t/0", [[0.5, 0.3]], classes=[np.array([2, 0])])
    s = _Data.of(recs).samples
    p = _probability_matrix(s, np.array([2]), 4)
    np.testing.assert_allclose(p, [[0.3, 0.1, 0.5, 0.1]])
