"""The monitoring job's configuration: a YAML file, validated field by field, mirrored by CLI flags.

Every field is declared once, in :class:`MonitorConfig`: its default, its kind (what values it accepts:
one of :data:`KINDS`), its help text and, for some, a maximum (:func:`setting`); :data:`FIELDS` lists
them (name -> (kind, help)). :func:`load_config` reads a YAML
mapping, :meth:`MonitorConfig.with_overrides` applies flag values on top, and every problem raises
:class:`ConfigError` naming the field, what was given and how to fix it. The CLI adds one flag per
field (``region`` → ``--region``, ``http_port`` → ``--http-port``) with :func:`add_config_flags`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

#: ``methods: auto`` as the config holds it (see :mod:`relmon.jobs.method_choice`).
AUTO_METHODS: tuple[str, ...] = ("auto",)


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; the message names the fix."""


def setting(default: Any, kind: str, help: str, maximum: float | None = None):
    """A field of :class:`MonitorConfig`: ``default``, its ``kind`` (a key of :data:`KINDS`, with a
    trailing ``?`` when null is allowed), the ``help`` text of its flag and error messages, and the
    largest accepted value of a numeric field (a bigger one is a typo or overflows a timer / backoff)."""
    return field(default=default, metadata={"kind": kind, "help": help, "maximum": maximum})


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of ``relmon calibrate`` / ``monitor`` / ``serve`` (see :data:`FIELDS` for each one)."""

    # model
    model: str = setting(
        "fmnist_cnn", "str",
        "embedded model name (fmnist_cnn, fmnist_vgg) or 'package.module:factory'",
    )
    model_kwargs: dict[str, Any] | None = setting(None, "mapping?", "keyword arguments passed to the model factory")
    checkpoint: str | None = setting(
        None, "str?",
        "weights-only state_dict, or a Lightning .ckpt with lightning_module",
    )
    lightning_module: str | None = setting(
        None, "str?",
        "'package.module:Class' of the LightningModule the checkpoint holds",
    )
    model_attr: str | None = setting(
        None, "str?",
        "with lightning_module: the LightningModule attribute holding the classifier (default: model / net / "
        "classifier, else its forward without its torchmetrics children)",
    )
    preprocessing: dict[str, Any] | None = setting(
        None, "preprocessing?",
        "the model's input space: {mean, std, low, high} (scalars or per channel)",
    )
    classes: tuple[str, ...] | None = setting(
        None, "list[str]?",
        "class names in the model's output order (count checked against the model)",
    )
    model_name: str | None = setting(None, "str?", "the 'model' label (default: embedded name or the factory's name)")
    model_version: str | None = setting(None, "str?", "the 'model_version' label (default: a hash of the weights)")
    # input window
    input: str = setting(
        "sample", "str",
        "'sample' (the shipped Fashion-MNIST sample) or a folder / fsspec URL of images",
    )
    shift: str | None = setting(
        None, "shift?",
        "shift applied to the shipped sample (gaussian_noise, blur, contrast, ...)",
    )
    severity: int = setting(3, "severity", "severity 1..5 of the shift")
    n: int | None = setting(256, "int+?", "images taken from the shipped sample")
    channels: int = setting(1, "channels", "1 (grey) or 3 (RGB): folder images are converted to it")
    image_size: int | None = setting(None, "int+?", "resize folder images to this square side")
    size_policy: str = setting(
        "resize", "str",
        "without image_size, folder images of another size than the model's input size (the calibration's "
        "input_size, or the model's declared size): 'resize' or 'skip' (skipped ones are counted as size_mismatch)",
    )
    max_pixels: int = setting(
        50_000_000, "int+",
        "folder images with more pixels (width x height, read from the header before decoding) are skipped "
        "and counted as too_large",
    )
    max_file_bytes: int = setting(
        64 * 2**20, "int+",
        "folder input files larger than this many bytes are not read (counted as read_error); FIFOs, devices "
        "and other non-regular files are never opened",
    )
    stream: str = setting("default", "str", "stream name: the 'stream' label and the window id prefix")
    window: str | None = setting(
        None, "window?",
        "folder input: null (the whole folder is one window) or mtime (score the newest window of "
        "window_seconds by file modification time)",
    )
    window_seconds: float = setting(3600.0, "float+", "length of an mtime window in seconds")
    # scoring
    # auto: 'relmon calibrate' measures every candidate method on the model and picks the best
    # (relmon/jobs/method_choice.py); the embedded models keep lrp:epsilon_0_01, which beat sensitivity on
    # both at the paper's protocol (README "The paper's comparison")
    methods: tuple[str, ...] = setting(
        AUTO_METHODS, "methods",
        "heatmap methods (see 'relmon methods'), or auto: the calibration measures method_candidates on the "
        "model and picks the best (embedded models: lrp:epsilon_0_01)",
    )
    method_candidates: tuple[str, ...] = setting(
        ("sensitivity", "gradient_x_input", "lrp:epsilon_0_01", "lrp:epsilon_plus_flat", "lrp:epsilon_gamma_box"),
        "list[str]",
        "methods 'relmon calibrate' compares (paired AOPC gap to the random order), cheapest first (the order "
        "breaks ties); LRP ones relmon's LRP refuses for the model are left out",
    )
    method_table_n: int = setting(
        128, "int>=0",
        "clean calibration images on which 'relmon calibrate' compares the method candidates (0: no table; "
        "methods: auto then uses its fallback)",
    )
    region: int = setting(4, "int+", "side in pixels of the perturbed square regions")
    steps: int | None = setting(
        8, "int+?",
        "perturbation steps L (AOPC costs L+1 forwards per image and method); a count, whatever the image "
        "size; null with fraction",
    )
    fraction: float | None = setting(
        None, "float01?",
        "instead of steps: the share of the image's regions perturbed, L = round(fraction x regions) on the "
        "model's input size (the paper's protocol: 0.16); not with steps",
    )  # instead of steps: L = round(fraction x regions), see resolve_steps
    sample_rate: float = setting(1.0, "float01", "share of the window's inputs that are scored, in (0, 1]")
    max_samples: int | None = setting(None, "int+?", "cap of scored inputs per window")
    batch_size: int = setting(64, "int+", "images per batch")
    seed: int = setting(0, "int>=0", "seed of sampling, noise and random orders")
    accelerator: str = setting("cpu", "accelerator", "Lightning accelerator: cpu, gpu (cuda), mps or auto")
    step_stride: int = setting(1, "int+", "evaluate every s-th perturbation step and interpolate (1: every step)")
    max_batch_bytes: int = setting(256 * 2**20, "int+", "memory budget in bytes of one batch of perturbed images")
    random_fraction: float = setting(
        1.0, "float01",
        "share of the scored samples whose random-order baseline is evaluated (1: all; less is cheaper, its "
        "error is in benchmarks/RESULTS.md)",
    )
    threads: int | None = setting(None, "int+?", "CPU threads of the job's forwards (null: torch's default)",
                                  maximum=1024)
    runner: str = setting(
        "plain", "runner",
        "scoring loop: plain (one process, no Lightning import: fastest start-up) or lightning "
        "(pl.Trainer.predict with RelevanceMonitor); both give the same records",
    )
    # scale out: Lightning DDP in one job, or shard jobs merged by 'relmon merge'
    devices: int = setting(
        1, "int+",
        "devices (processes) per node that score one window together (Lightning DDP; needs runner: lightning); "
        "results equal one device's",
    )
    strategy: str = setting(
        "auto", "strategy", "Lightning strategy with devices > 1: auto or ddp (one process per device)"
    )
    num_nodes: int = setting(
        1, "int+", "nodes of a multi-node DDP run (needs runner: lightning; the cluster starts the ranks)"
    )
    shard: str | None = setting(
        None, "shard?",
        "I/N: score only shard I of N of the window (files split by a hash of their relative path) and write "
        "records/<stream>/<run_id>/part-I.parquet; 'relmon merge' makes the window",
    )
    run_id: str | None = setting(
        None, "runid?",
        "the run id of a sharded run, the same for all its shards and the merge (letters, digits, ._-)",
    )
    # calibration and analysis
    calibration: str | None = setting(None, "str?", "calibration folder written by 'relmon calibrate'")
    calibration_data: str | None = setting(
        None, "str?",
        "labelled data for 'relmon calibrate': a folder with one sub-folder per class, or a CSV/Parquet "
        "manifest with columns path and label",
    )
    # candidates; 'relmon calibrate' fits them all and picks the default by leave-one-shift-type-out
    # validation on the calibration windows
    estimators: tuple[str, ...] = setting(
        (
            "average_confidence", "cbpe_isotonic", "atc", "doc", "cot", "nuclear_norm", "mano",
            "correctness_confidence", "correctness_relevance", "regression_relevance",
        ),
        "list[str]",
        "estimators fitted by 'relmon calibrate'",
    )
    calibration_n: int = setting(100, "int+", "images per calibration window")
    calibration_shifts: tuple[str, ...] = setting(
        (
            "gaussian_noise", "blur", "contrast", "brightness", "rotation", "occlusion", "pixelation", "jpeg",
        ),
        "list[str]",
        "shifts making the calibration windows",
    )
    calibration_severities: tuple[int, ...] = setting((1, 3, 5), "list[int]", "severities of the calibration shifts")
    # issue 19: calibration windows in which the shortcut is broken (relmon.jobs.shortcut_windows)
    shortcut_variants: tuple[str, ...] = setting(
        (), "list[variant]",
        "calibration windows with the suspect_regions broken: remove (blanked) and/or shuffle (swapped between "
        "images); one window per variant and share of shortcut_shares; needs suspect_regions",
    )
    shortcut_shares: tuple[float, ...] = setting(
        (0.25, 0.5, 1.0), "list[share]",
        "shares of a shortcut variant window's images whose suspect regions are broken (the rest intact)",
    )
    drift_alpha: float = setting(0.01, "float01", "family-wise significance level of the drift alarm")
    # relevance location (issue 19): rectangles from 'relmon audit' become per-sample monitoring features
    suspect_regions: tuple[tuple[int, int, int, int], ...] | None = setting(
        None, "rects?",
        "suspect regions [[top, left, height, width], ...] in the model's input pixels, or the path of a "
        "'relmon audit --json' output file: adds the relevance share in them and the occlusion flip rate to the "
        "records, metrics and drift tests",
    )
    allow_version_mismatch: bool = setting(
        False, "bool",
        "use a calibration made for another version of the model (flagged)",
    )
    # outputs
    records: str | None = setting(None, "str?", "folder for the per-sample records (Parquet)")
    textfile: str | None = setting(None, "str?", "write the metrics to this file (atomically), e.g. for node-exporter")
    pushgateway: str | None = setting(None, "str?", "Pushgateway address host:port to push the metrics to")
    job: str = setting("relmon", "str", "Pushgateway job name")
    push_timeout: float = setting(
        10.0, "float+",
        "seconds per push attempt, a deadline for the whole attempt (a gateway that trickles bytes is cut "
        "off)",
        maximum=86400.0,
    )
    push_retries: int = setting(3, "int>=0", "push retries after the first attempt (exponential backoff)", maximum=100)
    push_backoff: float = setting(0.5, "float+", "seconds before the first retry (doubles each retry)", maximum=3600.0)
    http_addr: str = setting(
        "127.0.0.1", "str",
        "address the /metrics endpoint of 'relmon serve' binds (loopback by default; 0.0.0.0: all interfaces)",
    )
    http_port: int = setting(9108, "port", "port of the /metrics endpoint (0: any free port)")
    # serve loop
    interval_seconds: float = setting(
        60.0, "float+",
        "seconds between runs (serve) or between folder checks (watch)",
        maximum=366 * 86400.0,
    )
    watch: bool = setting(False, "bool", "serve: re-run when the input folder changes instead of on every interval")
    max_iterations: int | None = setting(None, "int+?", "serve: stop after this many runs (default: run until stopped)")
    # exporter security (C)
    http_tls_cert_file: str | None = setting(
        None, "str?",
        "PEM certificate of the /metrics endpoint (with http_tls_key_file: HTTPS)",
    )
    http_tls_key_file: str | None = setting(None, "str?", "PEM private key of http_tls_cert_file")
    http_tls_client_ca_file: str | None = setting(
        None, "str?",
        "PEM CA bundle: scrapers must present a certificate it signed (mutual TLS)",
    )
    http_auth_username: str | None = setting(None, "str?", "basic-auth user the /metrics endpoint requires")
    http_auth_password_file: str | None = setting(None, "str?", "file holding the endpoint's basic-auth password")
    http_auth_password_env: str | None = setting(
        None, "str?",
        "environment variable holding the endpoint's basic-auth password",
    )
    push_username: str | None = setting(None, "str?", "basic-auth user for pushes to the Pushgateway")
    push_password_file: str | None = setting(None, "str?", "file holding the push basic-auth password")
    push_password_env: str | None = setting(None, "str?", "environment variable holding the push basic-auth password")
    push_tls_ca_file: str | None = setting(
        None, "str?",
        "PEM CA bundle that verifies an https Pushgateway (default: system CAs)",
    )
    push_tls_cert_file: str | None = setting(None, "str?", "PEM client certificate for pushes (with push_tls_key_file)")
    push_tls_key_file: str | None = setting(None, "str?", "PEM private key of push_tls_cert_file")
    # reliability (B)
    run_timeout_seconds: float | None = setting(
        None, "float+?",
        "stop scoring after this many seconds (checked between batches); the finished batches' records are "
        "written and the run exits 7",
        maximum=366 * 86400.0,
    )
    only_new: bool = setting(
        False, "bool",
        "score only files new or changed since the last successful run (state kept in the records folder)",
    )


    def with_overrides(self, overrides: Mapping[str, Any]) -> MonitorConfig:
        """A copy with ``overrides`` (None values ignored) applied and validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        _check_names(given, "override")
        values = {k: _coerce(k, v) for k, v in given.items()}
        # steps and fraction are two ways to give L: the one given here replaces the other one
        if values.get("fraction") is not None and "steps" not in values:
            values["steps"] = None
        elif values.get("steps") is not None and "fraction" not in values:
            values["fraction"] = None
        return replace(self, **values).validated()

    def validated(self) -> MonitorConfig:
        """Cross-field checks; returns self."""
        if self.watch and _is_sample(self.input):
            raise ConfigError(
                "watch: true needs input to be a folder to watch, got input: sample; "
                "fix: set input to a folder of images or set watch: false"
            )
        if self.is_embedded:
            for name in ("model_kwargs", "preprocessing"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{name} applies to a 'package.module:factory' model, not to the embedded model "
                        f"{self.model!r}; fix: remove {name} or set model to your factory"
                    )
        if self.lightning_module is not None and self.checkpoint is None:
            raise ConfigError(
                "lightning_module needs checkpoint (the Lightning .ckpt file to load); "
                "fix: set checkpoint or remove lightning_module"
            )
        if self.model_attr is not None and self.lightning_module is None:
            raise ConfigError(
                f"model_attr ({self.model_attr!r}) applies to a Lightning checkpoint, but lightning_module is not "
                "set; fix: set lightning_module: 'package.module:Class' (and checkpoint), or remove model_attr"
            )
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ConfigError(f"config field 'classes' names {dup} more than once; fix: list each class once")
        if self.shift is not None and not _is_sample(self.input):
            raise ConfigError(
                f"shift applies to input: sample only, got input: {self.input!r}; "
                "fix: remove shift (flag: --shift none) or set input: sample"
            )
        self._check_steps_or_fraction()
        if self.shortcut_variants and not self.suspect_regions:
            raise ConfigError(
                f"shortcut_variants {list(self.shortcut_variants)} break the shortcut in the suspect regions, but "
                "suspect_regions is not set; fix: set suspect_regions (the [top, left, height, width] rectangles "
                "from 'relmon audit') or remove shortcut_variants"
            )
        if self.size_policy not in ("resize", "skip"):
            raise ConfigError(
                f"size_policy must be 'resize' or 'skip', got {self.size_policy!r}; fix: 'resize' brings folder "
                "images of another size to the first image's size, 'skip' skips and counts them (size_mismatch)"
            )
        self._check_scale_out()
        if self.pushgateway:
            from relmon.urls import push_url_problem

            problem = push_url_problem(self.pushgateway)
            if problem is not None:
                raise ConfigError(f"config field 'pushgateway': {problem}")
        # reliability (B)
        if self.only_new and _is_sample(self.input):
            raise ConfigError(
                "only_new: true needs input to be a folder or fsspec URL of image files, got input: sample; "
                "fix: set input to a folder or set only_new: false"
            )
        if self.only_new and not self.records:
            raise ConfigError(
                "only_new: true keeps its state (the files already scored) in the records folder, but "
                "records is not set; fix: set records: FOLDER (flag --records)"
            )
        return self

    @property
    def world_size(self) -> int:
        """Processes scoring one window together: ``devices x num_nodes``."""
        return int(self.devices) * int(self.num_nodes)

    def _check_scale_out(self) -> None:
        if self.world_size > 1 and self.runner != "lightning":
            raise ConfigError(
                f"devices: {self.devices} and num_nodes: {self.num_nodes} need runner: lightning (the plain runner "
                "scores on one device); fix: set runner: lightning (flag --runner lightning)")
        if self.shard is None:
            return
        if not self.records:
            raise ConfigError("shard writes its part of the window to the records folder, but records is not set; "
                              "fix: set records: FOLDER (flag --records), the same for every shard")
        if self.run_id is None:
            raise ConfigError("shard needs run_id, the same for every shard of the window and for 'relmon merge' "
                              "(e.g. the Kubernetes Job's name); fix: pass --run-id ID")
        if self.only_new:
            raise ConfigError("only_new keeps one state per stream, which shards would race for; fix: set "
                              "only_new: false (flag --no-only-new) for sharded runs")
        if self.world_size > 1:
            raise ConfigError("shard with devices/num_nodes > 1 is not supported: run each shard on one device, "
                              "or one DDP job without shard")

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):  # suspect_regions: a list of lists
                v = [list(x) if isinstance(x, tuple) else x for x in v]
            out[f.name] = v if isinstance(v, list) else (dict(v) if isinstance(v, Mapping) else v)
        return out

    def _check_steps_or_fraction(self) -> None:
        if self.steps is not None and self.fraction is not None:
            raise ConfigError(
                f"steps ({self.steps}) and fraction ({self.fraction:g}) are both set; they are two ways to give "
                "the number of perturbation steps L; fix: give only one of them: remove steps (steps: null, "
                "flag --steps none, MonitorConfig(steps=None, ...)) to perturb that fraction of the image's "
                "regions, or remove fraction"
            )

    def resolve_steps(self, height: int, width: int) -> int:
        """The number of perturbation steps ``L`` on ``height x width`` images, by the one rule of
        :func:`relmon.perturbation.resolve_steps`: ``steps`` as given (at most the number of regions), or
        ``round(fraction x regions)``, at least 1 (``fraction = 0.16`` with region 4 on 28x28 gives 8);
        neither set means fraction 0.16."""
        from relmon.perturbation import resolve_steps

        self._check_steps_or_fraction()  # also for a config built without validated()
        try:
            return resolve_steps(int(height), int(width), self.region, self.steps, self.fraction)
        except ValueError as err:
            given = f"steps={self.steps}" if self.fraction is None else f"fraction={self.fraction}"
            raise ConfigError(
                f"cannot resolve the perturbation steps from {given} on {height}x{width} "
                f"images with region {self.region}: {err}; fix: choose a region at most the image side, or give "
                f"{'fewer steps or fraction' if self.fraction is None else 'steps'}"
            ) from None

    @property
    def is_embedded(self) -> bool:
        """True when the model is one of relmon's embedded models (not a factory or Lightning class)."""
        return ":" not in self.model and self.lightning_module is None

    def preprocessing_spec(self):
        """The declared ``preprocessing`` as a :class:`~relmon.models.Preprocessing` (None if not set)."""
        if self.preprocessing is None:
            return None
        from relmon.preprocessing import Preprocessing

        p = self.preprocessing
        return Preprocessing(
            mean=p.get("mean", 0.0), std=p.get("std", 1.0), low=p.get("low", 0.0), high=p.get("high", 1.0)
        )


def _is_sample(value: str) -> bool:
    return value == "sample"


# name -> (kind, help), in declaration order
FIELDS: dict[str, tuple[str, str]] = {
    f.name: (f.metadata["kind"], f.metadata["help"]) for f in fields(MonitorConfig)
}
_MAXIMA: dict[str, float] = {
    f.name: f.metadata["maximum"] for f in fields(MonitorConfig) if f.metadata["maximum"] is not None
}

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
RUNNERS = ("plain", "lightning")
STRATEGIES = ("auto", "ddp")
_PREP_KEYS = ("mean", "std", "low", "high")


def _bad(name: str, kind: str, value: Any, extra: str = "") -> ConfigError:
    null = " or null" if kind.endswith("?") else ""
    return ConfigError(
        f"config field {name!r}: expected {KINDS[kind.rstrip('?')][0]}{null}, got {value!r}{extra}; "
        f"fix: set {name} ({FIELDS[name][1]})"
    )


def _coerce(name: str, value: Any) -> Any:
    """``value`` checked and converted for field ``name`` by the coercer of its kind (:data:`KINDS`)."""
    kind = FIELDS[name][0]
    if kind.endswith("?") and isinstance(value, str) and value.lower() in ("none", "null"):
        value = None  # lets a flag clear a file's value: --shift none
    if value is None:
        if kind.endswith("?"):
            return None
        raise _bad(name, kind, value)
    return KINDS[kind.rstrip("?")][1](name, kind, value)


def _yaml_value(name: str, kind: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    import yaml  # a flag: --model-kwargs '{a: 1}'

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise _bad(name, kind, value) from None


def _mapping(name: str, kind: str, value: Any) -> dict[str, Any]:
    value = _yaml_value(name, kind, value)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _bad(name, kind, value)
    return dict(value)


def _window(name: str, kind: str, value: Any) -> str:
    if value != "mtime":
        raise _bad(name, kind, value, " (the whole folder is one window unless window: mtime)")
    return value


def _accelerator(name: str, kind: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in ACCELERATORS:
        raise _bad(name, kind, value, f" ({value!r} is not supported: relmon runs on {', '.join(ACCELERATORS)})")
    return value.lower()


def _runner(name: str, kind: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in RUNNERS:
        raise _bad(name, kind, value)
    return value.lower()


def _strategy(name: str, kind: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in STRATEGIES:
        raise _bad(name, kind, value, " (the job supports one process per device: ddp; spawn-based and "
                                      "sharded-model strategies are not supported)")
    return value.lower()


def _shard(name: str, kind: str, value: Any) -> str:
    from relmon.runs import parse_shard

    try:
        index, count = parse_shard(value)
    except ValueError:
        raise _bad(name, kind, value) from None
    return f"{index}/{count}"


def _run_id(name: str, kind: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
        raise _bad(name, kind, value)
    return value


def _string(name: str, kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(name, kind, value)
    return value


def _shift(name: str, kind: str, value: Any) -> str:
    from relmon.data.shifts import SHIFTS

    if _string(name, kind, value) not in SHIFTS:
        raise _bad(name, kind, value, f" (known shifts: {', '.join(SHIFTS)})")
    return value


def _bool(name: str, kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise _bad(name, kind, value)


def _integer(accept):
    """The coercer of an integer kind whose values satisfy ``accept``."""

    def coerce(name: str, kind: str, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise _bad(name, kind, value) from None
        if isinstance(value, bool) or not isinstance(value, int) or not accept(value):
            raise _bad(name, kind, value)
        _check_maximum(name, kind, value)
        return value

    return coerce


def _number(accept):
    """The coercer of a real-number kind whose finite values satisfy ``accept``."""

    def coerce(name: str, kind: str, value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _bad(name, kind, value) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(name, kind, value)
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            raise _bad(name, kind, value, " (not a finite number)") from None
        if not math.isfinite(value):
            raise _bad(name, kind, value, " (not a finite number)")
        if not accept(value):
            raise _bad(name, kind, value)
        _check_maximum(name, kind, value)
        return value

    return coerce


def _list(item: type):
    """The coercer of a non-empty list of ``item`` (str or int); one value is a list of one."""

    def coerce(name: str, kind: str, value: Any) -> tuple:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise _bad(name, kind, value)
        if name == "classes":  # class names may be written as numbers in YAML
            value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if item is str:
            if not all(isinstance(v, str) and v for v in value):
                raise _bad(name, kind, value)
            return tuple(value)
        try:
            out = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise _bad(name, kind, value) from None
        if any(isinstance(v, bool) for v in value):
            raise _bad(name, kind, value)
        return out

    return coerce


def _methods(name: str, kind: str, value: Any) -> tuple[str, ...]:
    """A list of method ids, or ``auto`` (alone: the calibration chooses one method per model)."""
    value = _list(str)(name, kind, value)
    if any(v.lower() == "auto" for v in value):
        if len(value) > 1:
            raise _bad(name, kind, list(value), " (auto lets the calibration choose the method and cannot be combined "
                                               "with other methods)")
        return AUTO_METHODS
    return value


def _unique_list(item, allow_empty: bool = True):
    """The coercer of a list (empty allowed: ``[]``, or ``none`` from a flag) of distinct values that
    ``item(name, kind, value)`` checks and converts."""

    def coerce(name: str, kind: str, value: Any) -> tuple:
        if isinstance(value, str) and value.lower() in ("none", "null", "[]"):
            value = []
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not (value or allow_empty):
            raise _bad(name, kind, value)
        out = tuple(item(name, kind, v) for v in value)
        if len(set(out)) != len(out):
            raise _bad(name, kind, value, " (a value is listed twice)")
        return out

    return coerce


def _variant(name: str, kind: str, value: Any) -> str:
    if value not in ("remove", "shuffle"):
        raise _bad(name, kind, value, f" ({value!r} is not a shortcut variant)")
    return value


def _share(name: str, kind: str, value: Any) -> float:
    try:
        return _number(lambda v: 0.0 < v <= 1.0)(name, kind, value)
    except ConfigError:
        raise _bad(name, kind, value, f" ({value!r} is not a share in (0, 1])") from None


def _rects(name: str, kind: str, value: Any) -> tuple[tuple[int, int, int, int], ...]:
    from relmon.suspect_regions import SuspectRegionsError, coerce_regions

    try:
        return coerce_regions(name, value, _bad(name, kind, value).args[0])
    except SuspectRegionsError as err:
        raise ConfigError(str(err)) from None


def _preprocessing(name: str, kind: str, value: Any) -> dict[str, Any]:
    return _coerce_preprocessing(name, kind, _yaml_value(name, kind, value))


#: kind -> (what it accepts, as error messages say it; coercer ``(name, kind, value) -> value``).
#: A field's kind may end in ``?``: null (or "none"/"null" from a flag) is accepted too.
KINDS: dict[str, tuple[str, Any]] = {
    "str": ("a non-empty string", _string),
    "shift": ("a name such as gaussian_noise", _shift),
    "bool": ("true or false", _bool),
    "int+": ("a positive integer, e.g. 7", _integer(lambda v: v >= 1)),
    "int>=0": ("an integer >= 0, e.g. 3", _integer(lambda v: v >= 0)),
    "port": ("an integer in 0..65535, e.g. 9108", _integer(lambda v: 0 <= v <= 65535)),
    "severity": ("an integer 1..5", _integer(lambda v: 1 <= v <= 5)),
    "channels": ("1 or 3", _integer(lambda v: v in (1, 3))),
    "float01": ("a number in (0, 1], e.g. 0.5", _number(lambda v: 0.0 < v <= 1.0)),
    "float+": ("a positive number, e.g. 10", _number(lambda v: v > 0.0)),
    "list[str]": ("a list of strings, e.g. [lrp]", _list(str)),
    "methods": ("auto or a list of method ids, e.g. [lrp:epsilon_plus_flat]", _methods),
    "list[int]": ("a list of integers, e.g. [1, 3]", _list(int)),
    "list[variant]": ("a list of remove and/or shuffle (or [] for none)", _unique_list(_variant)),
    "list[share]": ("a non-empty list of shares in (0, 1], e.g. [0.25, 0.5, 1.0]", _unique_list(_share, allow_empty=False)),
    "mapping": ("a mapping of name: value, e.g. {num_classes: 10}", _mapping),
    "preprocessing": ("a mapping {mean: [..], std: [..], low: 0.0, high: 1.0}", _preprocessing),
    "window": ("mtime", _window),
    "accelerator": ("one of cpu, gpu, cuda, mps, auto", _accelerator),
    "runner": ("plain or lightning", _runner),
    "strategy": ("auto or ddp", _strategy),
    "shard": ("I/N with 0 <= I < N, e.g. 0/4", _shard),
    "runid": ("a name of letters, digits, '.', '_' or '-', e.g. nightly-2026-12-03", _run_id),
    "rects": ("a list of [top, left, height, width] rectangles, e.g. [[1, 1, 3, 3]], or the path of a "
              "'relmon audit --json' file", _rects),
}


def _coerce_preprocessing(name: str, kind: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(name, kind, value)
    unknown = [k for k in value if k not in _PREP_KEYS]
    if unknown:
        raise _bad(name, kind, value, f" (unknown key(s) {unknown}; allowed: {', '.join(_PREP_KEYS)})")
    out: dict[str, Any] = {}
    for key, v in value.items():
        values = v if isinstance(v, (list, tuple)) else [v]
        if (
            not values
            or key in ("low", "high") and len(values) != 1
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values)
        ):
            what = "one number" if key in ("low", "high") else "a number or one number per channel"
            raise _bad(name, kind, value, f" ({key} must be {what}, got {v!r})")
        out[key] = float(values[0]) if key in ("low", "high") else [float(x) for x in values]
    if "std" in out and any(x <= 0 for x in out["std"]):
        raise _bad(name, kind, value, " (std must be positive)")
    if out.get("low", 0.0) >= out.get("high", 1.0):
        raise _bad(name, kind, value, " (low must be below high)")
    return out


def _check_maximum(name: str, kind: str, value: float) -> None:
    top = _MAXIMA.get(name)
    if top is not None and value > top:
        raise _bad(name, kind, value, f" (at most {top:g})")


def _check_names(values: Mapping[str, Any], where: str) -> None:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), list(FIELDS), n=1)
            did = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown config field {key!r} in {where}; {did}fix: remove it or use one of "
                f"{', '.join(FIELDS)}"
            )


def config_from_dict(values: Mapping[str, Any], where: str = "config") -> MonitorConfig:
    """A validated :class:`MonitorConfig` from a mapping (e.g. a parsed YAML file)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a YAML mapping of field: value, got {type(values).__name__}")
    _check_names(values, where)
    kwargs = {k: _coerce(k, v) for k, v in values.items()}
    if kwargs.get("fraction") is not None and "steps" not in kwargs:
        kwargs["steps"] = None  # fraction replaces the default steps; both given is an error (validated)
    return MonitorConfig(**kwargs).validated()


def load_config(path: str | os.PathLike | None) -> MonitorConfig:
    """Read and validate a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return MonitorConfig().validated()
    import yaml

    path = Path(path)
    fix = "fix: pass a readable YAML file to --config (see deploy/relmon.example.yaml)"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist; {fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path {str(path)!r} is a directory, not a YAML file; {fix}") from None
    except PermissionError:
        raise ConfigError(f"config file {str(path)!r} cannot be read (permission denied); {fix}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); {fix}"
        ) from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({err.strerror or err}); {fix}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    return config_from_dict(values or {}, where=str(path))


def add_config_flags(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """One flag per config field (``--http-port``...), defaulting to None so only given flags override."""
    group = parser.add_argument_group("settings (override the --config file)")
    for name in names or list(FIELDS):
        kind, help_text = FIELDS[name]
        flag = "--" + name.replace("_", "-")
        default = getattr(MonitorConfig(), name)
        shown = list(default) if isinstance(default, tuple) else default
        if kind == "bool":
            group.add_argument(
                flag,
                dest=name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{help_text} (default {shown})",
            )
        elif kind.startswith("list") or kind == "methods":
            group.add_argument(
                flag, dest=name, nargs="+", default=None, metavar="V", help=f"{help_text} (default {shown})"
            )
        else:
            group.add_argument(
                flag, dest=name, default=None, metavar=name.upper(), help=f"{help_text} (default {shown})"
            )


def config_from_args(args: argparse.Namespace) -> MonitorConfig:
    """The ``--config`` file (if any) with the given flags applied on top."""
    base = load_config(getattr(args, "config", None))
    return base.with_overrides({k: getattr(args, k) for k in FIELDS if hasattr(args, k)})


__all__ = [
    "AUTO_METHODS",
    "FIELDS",
    "KINDS",
    "ConfigError",
    "MonitorConfig",
    "add_config_flags",
    "config_from_args",
    "config_from_dict",
    "load_config",
    "setting",
]
