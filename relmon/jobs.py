"""The monitoring job, the calibration and the ``serve`` loop behind ``relmon monitor|calibrate|serve``.

- :func:`calibrate` — labelled reference data (the shipped sample: one clean window plus shifted
  windows) → a calibration folder: fitted estimators (JSON), the clean window's records (the drift
  reference, Parquet) and ``calibration.json`` (model, version, scoring settings, time).
- :class:`MonitorJob` / :func:`run_monitor` — one window of unlabelled inputs → records through
  :class:`~relmon.lightning.RelevanceMonitor` in a real ``pl.Trainer.predict`` → window aggregates,
  drift against the calibration's reference, accuracy estimates → metrics → textfile / Pushgateway.
  Returns a :class:`MonitorSummary`. Without a calibration the estimate is the confidence baseline
  (mean max-softmax, ``estimator="average_confidence"``) and there are no drift metrics.
- :func:`serve` — start the /metrics endpoint and re-run the job every ``interval_seconds`` (or when
  the watched input folder changes); bounded by ``max_iterations`` and stoppable with an Event.

Calibration for another model: a calibration made for another model *name* or other scoring
settings (methods, region, steps) is always refused (:class:`CalibrationMismatchError`); one made for
another *version* of the same model is refused unless ``allow_version_mismatch`` is set, in which
case the job logs a warning and the summary's ``calibration_version_mismatch`` is True.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relmon.config import MonitorConfig
from relmon.export.metrics import RelmonMetrics
from relmon.export.outputs import HttpEndpoint, PushError, push, serve_http, write_textfile

log = logging.getLogger("relmon.jobs")

CALIBRATION_FORMAT = "relmon-calibration"
CALIBRATION_VERSION = 1
CALIBRATION_FILE = "calibration.json"
REFERENCE_FILE = "reference.parquet"
BASELINE_ESTIMATOR = "average_confidence"
_Z90 = 1.6448536269514722  # two-sided 90 % normal quantile, the estimators' default interval


class CalibrationMismatchError(ValueError):
    """The calibration was made for another model, version or scoring settings than the job's."""


class ServeError(RuntimeError):
    """The /metrics endpoint could not be started (address in use, permission, bad address)."""


class JobError(RuntimeError):
    """A run failed after its metrics were computed (e.g. the push); ``summary`` holds the results."""

    def __init__(self, message: str, summary: MonitorSummary):
        super().__init__(message)
        self.summary = summary


# --------------------------------------------------------------------------------------------------
# model, inputs and scoring


def load_job_model(cfg: MonitorConfig):
    """The model named by ``cfg.model``: an embedded name or ``package.module:factory`` (+ checkpoint)."""
    from relmon.models import list_embedded, load_embedded, load_model

    if ":" in cfg.model:
        return load_model(cfg.model, cfg.checkpoint)
    if cfg.checkpoint is not None:
        raise ValueError(
            f"checkpoint applies to 'package.module:factory' models, not to the embedded "
            f"model {cfg.model!r}; fix: remove checkpoint or name a factory"
        )
    if cfg.model not in list_embedded():
        raise ValueError(
            f"unknown embedded model {cfg.model!r}; choose one of {list_embedded()} or give "
            "'package.module:factory'"
        )
    return load_embedded(cfg.model)


def sample_images(
    n: int | None, shift: str | None = None, severity: int = 3, seed: int = 0, offset: int = 0
) -> tuple[Any, np.ndarray]:
    """``n`` shipped Fashion-MNIST images from ``offset`` (wrapping), float ``(n, 1, 28, 28)`` in [0, 1],
    optionally shifted, and their labels."""
    import torch

    from relmon.data import load_sample

    images, labels = load_sample()
    total = len(images)
    n = total if n is None else int(n)
    index = (np.arange(n) + offset) % total
    x = torch.from_numpy(images[index]).float().div_(255.0).unsqueeze(1)
    if shift is not None:
        from relmon.data.shifts import apply_shift

        x = apply_shift(x, shift, severity, seed=seed)
    return x, labels[index]


def build_stream(cfg: MonitorConfig, model):
    """The input stream of one window: the (shifted) shipped sample or a folder of images."""
    from relmon.data.streams import ImageFolderStream, TensorStream
    from relmon.models import get_preprocessing

    prep = get_preprocessing(model, "reading inputs")
    if cfg.input == "sample":
        x, labels = sample_images(cfg.n, cfg.shift, cfg.severity, cfg.seed)
        return TensorStream(x, labels, preprocessing=prep, stream=cfg.stream)
    return ImageFolderStream(
        cfg.input, preprocessing=prep, channels=cfg.channels, image_size=cfg.image_size, stream=cfg.stream
    )


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")


def score_stream(cfg: MonitorConfig, model, stream, progress: bool = False):
    """Run :class:`RelevanceMonitor` over ``stream`` in ``pl.Trainer.predict``: (records, window summary)."""
    import pytorch_lightning as pl

    from relmon.data.streams import StreamDataModule
    from relmon.lightning import RelevanceMonitor
    from relmon.records import empty_records

    _quiet_lightning()
    monitor = RelevanceMonitor(
        model,
        methods=cfg.methods,
        region=cfg.region,
        steps=cfg.steps,
        sample_rate=cfg.sample_rate,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
    )
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
    )
    frames = trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=cfg.batch_size)) or []
    frames = [f for f in frames if f is not None and len(f)]
    records = pd.concat(frames, ignore_index=True) if frames else empty_records()
    return records, monitor.last_summary or monitor.window_summary(), monitor


# --------------------------------------------------------------------------------------------------
# calibration


@dataclass
class Calibration:
    """A loaded calibration folder."""

    path: Path
    meta: dict[str, Any]
    estimators: dict[str, Any]
    reference: pd.DataFrame

    @property
    def timestamp(self) -> float:
        return float(self.meta["created"])


def calibrate(cfg: MonitorConfig, out: str | os.PathLike, progress: bool = False) -> Calibration:
    """Score labelled windows (clean + every shift × severity) and fit ``cfg.estimators`` on them.

    Writes ``out/calibration.json``, ``out/reference.parquet`` (the clean window's records, the drift
    reference), ``out/records.parquet`` (every calibration record) and ``out/estimators/<name>.json``.
    """
    import torch

    from relmon.analysis import make_estimator
    from relmon.data.streams import TensorStream
    from relmon.models import get_preprocessing, model_info
    from relmon.records import write_records

    if cfg.input != "sample":
        raise ValueError(
            "calibrate reads the labelled shipped sample (input: sample); got input: "
            f"{cfg.input!r}; fix: set input: sample"
        )
    model = load_job_model(cfg)
    info = model_info(model)
    n = cfg.calibration_n
    windows = [("clean", None, 0)] + [
        (f"{s}/{sev}", s, sev) for s in cfg.calibration_shifts for sev in cfg.calibration_severities
    ]
    xs, ys = [], []
    for i, (_, shift, sev) in enumerate(windows):
        x, y = sample_images(n, shift, sev, seed=cfg.seed, offset=i * n)
        xs.append(x)
        ys.append(y)
    stream = TensorStream(
        torch.cat(xs),
        np.concatenate(ys),
        preprocessing=get_preprocessing(model),
        stream="calibration",
        window_size=n,
    )
    records, _, _ = score_stream(cfg, model, stream, progress=progress)
    names = {f"calibration:{i * n}": name for i, (name, _, _) in enumerate(windows)}
    records["window_id"] = records["window_id"].map(names)
    out = Path(out)
    (out / "estimators").mkdir(parents=True, exist_ok=True)
    files = {}
    for name in cfg.estimators:
        est = make_estimator(name).fit(records)
        est.save(out / "estimators" / f"{name}.json")
        files[name] = f"estimators/{name}.json"
    write_records(records[records["window_id"] == "clean"], out / REFERENCE_FILE)
    write_records(records, out / "records.parquet")
    import relmon

    meta = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_VERSION,
        "created": time.time(),
        "relmon_version": relmon.__version__,
        "model": info.name,
        "model_version": info.version,
        "methods": list(cfg.methods),
        "region": cfg.region,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "windows": [w[0] for w in windows],
        "n_per_window": n,
        "estimators": files,
        "reference": REFERENCE_FILE,
        "window_accuracy": {
            k: float(v)
            for k, v in records.drop_duplicates(["window_id", "sample_id"])
            .groupby("window_id")["correct"]
            .mean()
            .items()
        },
    }
    tmp = out / (CALIBRATION_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / CALIBRATION_FILE)
    return load_calibration(out)


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration folder written by :func:`calibrate` (``ValueError`` naming what is wrong)."""
    from relmon.analysis import load_estimator
    from relmon.records import read_record_files

    path = Path(path)
    meta_path = path / CALIBRATION_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a calibration folder (no {CALIBRATION_FILE}); "
            "fix: run 'relmon calibrate --out FOLDER' and pass that folder"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    if meta.get("format") != CALIBRATION_FORMAT or meta.get("format_version") != CALIBRATION_VERSION:
        raise ValueError(f"{meta_path} is not a relmon calibration of format version {CALIBRATION_VERSION}")
    estimators = {name: load_estimator(path / rel) for name, rel in meta["estimators"].items()}
    reference = read_record_files([path / meta["reference"]])
    return Calibration(path, meta, estimators, reference)


def check_calibration(cal: Calibration, model_name: str, model_version: str, cfg: MonitorConfig) -> bool:
    """Raise :class:`CalibrationMismatchError` if ``cal`` does not fit; True if only the version differs
    (allowed by ``cfg.allow_version_mismatch``)."""
    from relmon.explain import canonical_method

    m = cal.meta
    if m["model"] != model_name:
        raise CalibrationMismatchError(
            f"calibration {str(cal.path)!r} was made for model {m['model']!r}, the job runs {model_name!r}; "
            "fix: run 'relmon calibrate' for this model"
        )
    settings = {
        "methods": [canonical_method(x) for x in cfg.methods],
        "region": cfg.region,
        "steps": cfg.steps,
    }
    made = {
        "methods": [canonical_method(x) for x in m["methods"]],
        "region": m["region"],
        "steps": m["steps"],
    }
    if settings != made:
        raise CalibrationMismatchError(
            f"calibration {str(cal.path)!r} was made with {made}, the job scores with {settings}: "
            "AOPC is not comparable; fix: use the calibration's settings or re-run 'relmon calibrate'"
        )
    if m["model_version"] != model_version:
        msg = (
            f"calibration {str(cal.path)!r} was made for version {m['model_version']!r} of {model_name!r}, "
            f"the job runs version {model_version!r}"
        )
        if not cfg.allow_version_mismatch:
            raise CalibrationMismatchError(
                msg + "; fix: re-run 'relmon calibrate' for this version (or set "
                "allow_version_mismatch: true to use it anyway, flagged)"
            )
        log.warning("%s; used anyway (allow_version_mismatch)", msg)
        return True
    return False


# --------------------------------------------------------------------------------------------------
# the monitoring job


@dataclass
class MonitorSummary:
    """What one run computed (also kept when an output fails)."""

    model: str
    model_version: str
    stream: str
    window_ids: list[str]
    seen: int
    scored: int
    input_errors: dict[str, int]
    methods: dict[str, dict[str, float]]
    confidence: float
    estimates: dict[str, tuple[float, float, float]]
    drift_p_values: dict[str, float] | None
    drift_alarm: bool | None
    duration_seconds: float
    finished_at: float
    accuracy: float | None = None
    calibration: str | None = None
    calibration_timestamp: float | None = None
    calibration_version_mismatch: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text summary table."""
        lines = [
            f"relmon monitor: model {self.model} (version {self.model_version}), stream {self.stream}, "
            f"{self.scored} of {self.seen} inputs scored, {sum(self.input_errors.values())} bad, "
            f"{self.duration_seconds:.1f} s"
        ]
        lines.append(f"\n{'method':<26} {'AOPC':>8} {'-random':>8} {'AOPC rel':>9} {'entropy':>8} {'n':>6}")
        for method, s in self.methods.items():
            lines.append(
                f"{method:<26} {s.get('aopc', math.nan):8.3f} {s.get('aopc_minus_random', math.nan):8.3f} "
                f"{s.get('aopc_rel', math.nan):9.3f} {s.get('entropy_bits', math.nan):8.3f} "
                f"{int(s.get('n', 0)):6d}"
            )
        lines.append(f"\n{'estimator':<34} {'accuracy':>8} {'interval':>17}")
        for name, (est, lo, hi) in self.estimates.items():
            lines.append(f"{name:<34} {est:8.3f} [{lo:6.3f}, {hi:6.3f}]")
        if self.accuracy is not None:
            lines.append(f"{'(true accuracy, labels known)':<34} {self.accuracy:8.3f}")
        lines.append(f"mean confidence {self.confidence:.3f}")
        if self.drift_p_values is not None:
            ps = ", ".join(f"{k} {v:.2g}" for k, v in self.drift_p_values.items())
            lines.append(f"drift: {'ALARM' if self.drift_alarm else 'no alarm'} (KS p-values: {ps})")
        else:
            lines.append("drift: not tested (no calibration)")
        if self.calibration:
            flag = " — MADE FOR ANOTHER MODEL VERSION" if self.calibration_version_mismatch else ""
            lines.append(f"calibration: {self.calibration}{flag}")
        for k, v in self.outputs.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def confidence_estimate(confidence: np.ndarray) -> tuple[float, float, float]:
    """The baseline without calibration: mean max-softmax with a 90 % Poisson-binomial interval."""
    c = confidence[np.isfinite(confidence)]
    if c.size == 0:
        return math.nan, math.nan, math.nan
    est = float(c.mean())
    half = _Z90 * math.sqrt(float((c * (1 - c)).sum())) / c.size
    return est, max(0.0, est - half), min(1.0, est + half)


class MonitorJob:
    """A configured job: the model, its metrics (on an explicit registry) and the calibration.

    :meth:`run` scores one window and fills the metrics; run it again (``serve``) and the counters
    accumulate while the gauges hold the latest window.
    """

    def __init__(self, cfg: MonitorConfig, registry=None, progress: bool = False):
        from relmon.models import model_info

        self.cfg = cfg
        self.progress = progress
        self.model = load_job_model(cfg)
        info = model_info(self.model)
        self.model_name, self.model_version = str(info.name), str(info.version)
        self.calibration = load_calibration(cfg.calibration) if cfg.calibration else None
        self.version_mismatch = (
            check_calibration(self.calibration, self.model_name, self.model_version, cfg)
            if self.calibration
            else False
        )
        self.metrics = RelmonMetrics(self.model_name, self.model_version, cfg.stream, registry=registry)
        if self.calibration is not None:
            self.metrics.set_calibration_timestamp(self.calibration.timestamp)

    @property
    def registry(self):
        return self.metrics.registry

    def compute(self) -> tuple[MonitorSummary, pd.DataFrame]:
        """Score the window and fill the metrics (no outputs)."""
        from relmon.records import RANDOM_METHOD

        cfg = self.cfg
        t0 = time.perf_counter()
        stream = build_stream(cfg, self.model)
        records, summary, _ = score_stream(cfg, self.model, stream, progress=self.progress)
        inputs = summary.pop("_inputs")
        errors = dict(getattr(stream, "errors", {}) or {})
        if sum(errors.values()) < inputs["bad"]:  # bad items seen by the batches but not by this process
            errors["read_error"] = errors.get("read_error", 0) + inputs["bad"] - sum(errors.values())
        samples = records.drop_duplicates(["window_id", "sample_id"]) if len(records) else records
        conf = samples["confidence"].to_numpy(dtype=float) if len(samples) else np.array([])
        labelled = samples["correct"].dropna() if "correct" in samples else pd.Series(dtype=float)
        accuracy = float(labelled.astype(float).mean()) if len(labelled) else None

        estimates: dict[str, tuple[float, float, float]] = {}
        drift_p, alarm = None, None
        if len(records) and self.calibration is not None:
            from relmon.analysis import ks_drift

            one = records.assign(window_id=records["window_id"].iloc[0])  # the job's window is one window
            for name, est in self.calibration.estimators.items():
                row = est.predict(one).iloc[-1]
                estimates[name] = (float(row["estimate"]), float(row["lower"]), float(row["upper"]))
            from relmon.explain import canonical_method

            res = ks_drift(
                self.calibration.reference,
                records,
                method=canonical_method(cfg.methods[0]),
                alpha=cfg.drift_alpha,
            )
            drift_p, alarm = dict(res.p_values), bool(res.alarm)
        if BASELINE_ESTIMATOR not in estimates:
            estimates[BASELINE_ESTIMATOR] = confidence_estimate(conf)

        m = self.metrics
        for name, (est, lo, hi) in estimates.items():
            m.set_estimate(name, est, lo, hi)
        png = records.groupby("method")["png_bytes"].mean() if len(records) else pd.Series(dtype=float)
        for method, s in summary.items():
            if method == RANDOM_METHOD:
                m.set_method(method, aopc=s["aopc"], aopc_relative=s["aopc_rel"])
            else:
                m.set_method(
                    method,
                    aopc=s["aopc"],
                    aopc_minus_random=s["aopc_minus_random"],
                    aopc_relative=s["aopc_rel"],
                    entropy_bits=s["entropy_bits"],
                    png_bytes=png.get(method, math.nan),
                )
            values = records.loc[records["method"] == method, "aopc_rel"] if len(records) else []
            m.observe_aopc_relative(method, values)
        m.set_confidence(float(conf.mean()) if conf.size else math.nan)
        if drift_p is not None:
            m.set_drift(drift_p, alarm)
        m.add_samples(len(samples))
        m.add_input_errors(errors)
        duration = time.perf_counter() - t0
        finished = time.time()
        m.set_run(duration, finished)
        result = MonitorSummary(
            model=self.model_name,
            model_version=self.model_version,
            stream=cfg.stream,
            window_ids=sorted(records["window_id"].unique().tolist()) if len(records) else [],
            seen=int(inputs["seen"]),
            scored=len(samples),
            input_errors=errors,
            methods=summary,
            confidence=float(conf.mean()) if conf.size else math.nan,
            estimates=estimates,
            drift_p_values=drift_p,
            drift_alarm=alarm,
            duration_seconds=duration,
            finished_at=finished,
            accuracy=accuracy,
            calibration=str(self.calibration.path) if self.calibration else None,
            calibration_timestamp=self.calibration.timestamp if self.calibration else None,
            calibration_version_mismatch=self.version_mismatch,
        )
        return result, records

    def run(self, outputs: bool = True) -> MonitorSummary:
        """:meth:`compute`, then write the records and textfile and push (``JobError`` keeps the summary).

        The push uses ``pushadd_to_gateway`` with job ``cfg.job`` and grouping key ``{model, stream}``. A
        scheduled job is a fresh process each time, so its pushed counters hold that run's counts;
        Prometheus' ``increase``/``rate`` treat the drop between runs as a counter reset.
        """
        from relmon.records import write_records

        summary, records = self.compute()
        cfg = self.cfg
        if cfg.records and len(records):
            name = summary.window_ids[0].replace("/", "_").replace(":", "_")
            summary.outputs["records"] = str(write_records(records, Path(cfg.records) / f"{name}.parquet"))
        if not outputs:
            return summary
        if cfg.textfile:
            summary.outputs["textfile"] = str(write_textfile(self.registry, cfg.textfile))
        if cfg.pushgateway:
            key = {"model": self.model_name, "stream": cfg.stream}
            try:
                attempts = push(
                    self.registry,
                    cfg.pushgateway,
                    job=cfg.job,
                    grouping_key=key,
                    timeout=cfg.push_timeout,
                    retries=cfg.push_retries,
                    backoff=cfg.push_backoff,
                )
            except PushError as err:
                summary.outputs["push"] = f"FAILED: {err}"
                raise JobError(str(err), summary) from err
            summary.outputs["push"] = f"{cfg.pushgateway} (job {cfg.job}, {attempts} attempt(s))"
        return summary


def run_monitor(cfg: MonitorConfig, registry=None, progress: bool = False) -> MonitorSummary:
    """One run of the scheduled job (``relmon monitor``)."""
    return MonitorJob(cfg, registry=registry, progress=progress).run()


# --------------------------------------------------------------------------------------------------
# serve


def folder_signature(root: str) -> tuple:
    """(path, size, mtime) of every file under the local folder ``root``: changes when inputs change."""
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            out.append((p, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


@dataclass
class ServeResult:
    runs: int
    failures: int
    summaries: list[MonitorSummary]


def serve(
    cfg: MonitorConfig,
    stop: threading.Event | None = None,
    on_ready: Callable[[HttpEndpoint], None] | None = None,
    on_run: Callable[[MonitorSummary], None] | None = None,
    registry=None,
    progress: bool = False,
) -> ServeResult:
    """Serve /metrics and re-run the job (every interval, or when the watched folder changed).

    Returns after ``cfg.max_iterations`` runs or once ``stop`` is set; the endpoint is stopped on the
    way out. A failing run is logged and counted (its last-success timestamp is not updated, so the
    stale-job alert fires); configuration errors raise before the endpoint starts. Pushes and
    textfile writes follow each run when configured.
    """
    stop = stop or threading.Event()
    job = MonitorJob(cfg, registry=registry, progress=progress)
    try:
        endpoint = serve_http(job.registry, port=cfg.http_port, addr=cfg.http_addr)
    except OSError as err:
        raise ServeError(
            f"cannot serve metrics on {cfg.http_addr}:{cfg.http_port}: {err}; fix: choose a free "
            "--http-port (or 0 for any) or another --http-addr"
        ) from err
    log.info("serving metrics at %s", endpoint.url)
    result = ServeResult(0, 0, [])
    try:
        if on_ready is not None:
            on_ready(endpoint)
        last_sig = None
        while not stop.is_set():
            sig = folder_signature(cfg.input) if cfg.watch else None
            if not cfg.watch or sig != last_sig:
                last_sig = sig
                t0 = time.perf_counter()
                try:
                    summary = job.run()
                    result.summaries.append(summary)
                    if on_run is not None:
                        on_run(summary)
                except JobError as err:
                    result.failures += 1
                    result.summaries.append(err.summary)
                    log.error("run failed: %s", err)
                except Exception as err:  # keep serving; last_success goes stale and alerts
                    result.failures += 1
                    job.metrics.set_run(time.perf_counter() - t0, None)
                    log.exception("run failed: %s", err)
                result.runs += 1
                if cfg.max_iterations is not None and result.runs >= cfg.max_iterations:
                    break
            stop.wait(cfg.interval_seconds)
    finally:
        endpoint.stop()
    return result


__all__ = [
    "Calibration",
    "CalibrationMismatchError",
    "JobError",
    "MonitorJob",
    "MonitorSummary",
    "ServeError",
    "ServeResult",
    "calibrate",
    "check_calibration",
    "confidence_estimate",
    "load_calibration",
    "run_monitor",
    "serve",
]
