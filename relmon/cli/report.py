"""``relmon report`` and ``relmon trend``: :func:`add_commands` registers them on the ``relmon`` command's
sub-parsers. Nothing heavy is imported until a command runs.

- ``relmon report RECORDS --out report.html``: one self-contained HTML page for the windows in a
  records folder (:mod:`relmon.report.html`);
- ``relmon trend RECORDS``: the windows as one table (printed; ``--csv``) and one figure (``--figure``).

Exit codes as for the other commands: 0 success, 2 usage error, 3 bad input (the message names it).
"""

from __future__ import annotations

import argparse
import sys

from relmon.exitcodes import EXIT_INPUT, EXIT_OK  # one set of exit codes for every command
from relmon.extras import require


def add_commands(subparsers) -> None:
    """Register ``report`` and ``trend`` on an ``add_subparsers()`` object."""
    rep = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report for the windows in a records folder",
        description="Read every record file under RECORDS (the folder given to 'relmon monitor --records', "
        "or a RecordWriter's output) and write one static HTML file with a table of contents: per-window "
        "AOPC, entropy, confidence, realised accuracy where labelled; with --calibration the accuracy "
        "estimates with intervals, drift p-values and alarms, and the calibration's validation tables; the "
        "worst-scoring inputs (lowest AOPC gap to random, lowest confidence) with their files and predicted "
        "classes, and their heatmaps when the model is given (--config, or --model/--checkpoint/"
        "--lightning-module; --no-images leaves images out); a per-class table; mean MoRF and random curves "
        "over the share of the image perturbed (else AOPC distributions). Images are embedded; the page "
        "loads nothing from the network.",
    )
    rep.add_argument("records", help="records folder (searched recursively) or one records Parquet file")
    rep.add_argument("--out", default="out/report.html", help="HTML file to write (default out/report.html)")
    rep.add_argument("--calibration", metavar="FOLDER", help="calibration folder ('relmon calibrate --out')")
    rep.add_argument("--method", help="heatmap method to summarise (default: lrp if present)")
    rep.add_argument("--no-images", dest="images", action="store_false",
                     help="leave out the inputs and heatmaps (inputs can be private data)")
    model = rep.add_argument_group(
        "the model and inputs for the worst inputs' heatmaps and the curves (without a model the page "
        "lists the worst inputs but draws no heatmaps)")
    model.add_argument("--config", metavar="FILE",
                       help="the job's YAML config: its model, checkpoint, lightning_module, model_attr, "
                            "preprocessing, classes, channels, image_size and input (the flags below override it)")
    model.add_argument("--model", help="an embedded name (fmnist_cnn) or 'package.module:factory'")
    model.add_argument("--checkpoint", help="weights (weights_only), or a Lightning .ckpt with --lightning-module")
    model.add_argument("--lightning-module", metavar="package.module:Class",
                       help="LightningModule class of the --checkpoint .ckpt")
    model.add_argument("--model-attr", metavar="NAME", help="its attribute that holds the classifier")
    model.add_argument("--preprocessing", metavar="MAPPING",
                       help="the model's input space, e.g. '{mean: [0.5], std: [0.25], low: 0, high: 1}'")
    model.add_argument("--input", help="where the scored inputs are: 'sample' (the shipped Fashion-MNIST "
                       "sample, shifted as --config says) or the folder the records' sample ids refer to")
    model.add_argument("--channels", type=int, help="channels of the folder's images (1 or 3)")
    model.add_argument("--image-size", type=int, help="resize folder images to this side")
    rep.add_argument("--examples", type=int, default=4,
                     help="worst inputs listed per criterion (lowest AOPC gap, lowest confidence; default 4)")
    rep.add_argument("--methods", nargs="+", help="methods for the examples (default: those in the records)")
    rep.add_argument("--region", type=int, help="perturbation region side (default: the calibration's, else 4)")
    rep.add_argument("--steps", type=int, help="perturbation steps (default: the calibration's, else the job's default)")
    rep.add_argument("--title", help="page title")
    rep.set_defaults(func=cmd_report)

    tr = subparsers.add_parser(
        "trend",
        help="the windows in a records folder as one table and one figure",
        description="One row per window (time, n, AOPC, AOPC/score0, AOPC - random, heatmap entropy, "
        "confidence, realised accuracy where labelled; with --calibration the default estimator's "
        "estimate and interval), printed as a table; --csv and --figure write it to files.",
    )
    tr.add_argument("records", help="records folder (searched recursively) or one records Parquet file")
    tr.add_argument("--method", help="heatmap method to summarise (default: lrp if present)")
    tr.add_argument("--calibration", metavar="FOLDER", help="add the calibration's accuracy estimates")
    tr.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    tr.add_argument("--figure", metavar="FILE", help="write the figure as PNG")
    tr.set_defaults(func=cmd_trend)


def _load(args, prog: str):
    from relmon.report.trend import load_records

    return load_records(args.records, on_skip=lambda _p, msg: print(f"{prog}: skipped {msg}", file=sys.stderr))


_MODEL_FLAGS = ("model", "checkpoint", "lightning_module", "model_attr", "preprocessing", "channels",
                "image_size", "input")


def _report_config(args):
    """The job's config from --config and the model flags (None when no model is named anywhere)."""
    from relmon.config import MonitorConfig, load_config

    given = {k: getattr(args, k) for k in _MODEL_FLAGS}
    if args.config is None and given["model"] is None and given["lightning_module"] is None:
        return None
    base = load_config(args.config) if args.config else MonitorConfig()
    return base.with_overrides(given)


def _read_inputs(cfg, sample_ids: list[str]):
    """The inputs ``sample_ids`` name (``(B, C, H, W)`` in [0, 1]), those found, and where they came from."""
    import torch

    if cfg.input == "sample":
        from relmon.jobs.inputs import sample_images

        images, _ = sample_images(cfg.n, cfg.shift, cfg.severity, cfg.seed)
        found = [s for s in sample_ids if str(s).isdigit() and int(s) < len(images)]
        shift = (f", shifted by {cfg.shift} (severity {cfg.severity}) as the config says" if cfg.shift
                 else " without any shift (give --config with a shifted window's shift to see it shifted)")
        return images[[int(s) for s in found]], found, f"the shipped Fashion-MNIST sample{shift}"
    from pathlib import Path

    from relmon.data.streams import BadSample, ImageFolderStream

    stream = ImageFolderStream(cfg.input, channels=cfg.channels, image_size=cfg.image_size)
    index: dict[str, int] = {}
    root = str(cfg.input).rstrip("/")
    for i, sid in enumerate(stream.sample_ids):
        index.setdefault(sid, i)
        if sid.startswith(root + "/"):
            index.setdefault(sid[len(root) + 1:], i)  # ids relative to the input root
        index.setdefault(Path(sid).name, i)
    found, images = [], []
    for s in sample_ids:
        i = index.get(str(s), index.get(Path(str(s)).name))
        item = stream[i] if i is not None else None
        if item is not None and not isinstance(item, BadSample):
            found.append(s)
            images.append(item["x"])
    return (torch.stack(images) if images else None), found, f"files under {cfg.input}"


def _run_settings(records_path: str) -> dict:
    """The perturbation settings (``region``, ``steps``) of the newest run under ``records_path``, read from
    the runs' per-window summary files (``*summary.json``); ``{}`` when there is none or none is readable."""
    import json
    from pathlib import Path

    root = Path(records_path)
    if not root.is_dir():
        root = root.parent
    found = []
    for path in root.rglob("*summary.json"):
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:
            continue
    for _, path in sorted(found, reverse=True):
        try:
            settings = json.loads(path.read_text()).get("settings") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if settings.get("region") and settings.get("steps"):
            return {"region": int(settings["region"]), "steps": int(settings["steps"])}
    return {}


def _examples(args, records, calibration, cfg, notes: list[str]):
    """Heatmaps and curves of the worst-scoring inputs, recomputed with the job's model."""
    from pathlib import Path

    from relmon.jobs.model import load_job_model
    from relmon.report.html import compute_examples
    from relmon.report.samples import class_name, worst_samples
    from relmon.report.trend import _window_key, choose_method

    n = int(args.examples)
    if n < 1:
        raise ValueError(f"--examples must be >= 1, got {n}")
    model = load_job_model(cfg)
    method = choose_method(records, args.method)
    classes = (calibration.meta.get("classes") if calibration is not None else None) or cfg.classes
    if classes is None and cfg.is_embedded:
        from relmon.data import FASHION_MNIST_CLASSES

        classes = list(FASHION_MNIST_CLASSES)
    picked: dict[str, str] = {}  # sample_id -> caption, worst first, each input once
    for label, frame in worst_samples(records.assign(_window=_window_key(records)), method, k=n).items():
        for _, row in frame.iterrows():
            sid = str(row["sample_id"])
            picked.setdefault(sid, f"{row['_window']} · {Path(sid).name[-16:]}\n{class_name(row['pred'], classes)}"
                                   f"\n{label.replace('lowest ', 'low ')}")
    images, found, source = _read_inputs(cfg, list(picked))
    if len(found) < len(picked):
        notes.append(f"{len(picked) - len(found)} of the {len(picked)} worst inputs were not found in "
                     f"{cfg.input!r} (pass --input with the folder the records' sample ids refer to)")
    if images is None or not len(found):
        return None
    meta = calibration.meta if calibration is not None else {}
    run = _run_settings(args.records)  # what the monitored runs used, from their summary files
    region = args.region or meta.get("region") or run.get("region") or cfg.region
    steps = args.steps or meta.get("steps") or run.get("steps") or cfg.steps
    methods = args.methods or sorted(m for m in records["method"].unique() if m != "random")
    return compute_examples(model, images, methods, region=region, steps=steps,
                            source=f"{len(found)} worst inputs re-read from {source}, region {region}, {steps} steps",
                            titles=[picked[s] for s in found])


def cmd_report(args: argparse.Namespace) -> int:
    require("matplotlib", "relmon report")  # before any work: the page's figures need it
    try:
        from relmon.report.html import write_report

        records = _load(args, "relmon report")
        calibration = None
        if args.calibration:
            from relmon.jobs import load_calibration

            calibration = load_calibration(args.calibration)
        cfg = _report_config(args)
        notes: list[str] = []
        examples = _examples(args, records, calibration, cfg, notes) if (cfg is not None and args.images) else None
        path = write_report(args.out, records, calibration=calibration, examples=examples, notes=notes,
                            images=args.images, method=args.method, title=args.title,
                            classes=cfg.classes if cfg is not None and cfg.classes else None, worst=args.examples)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError, AttributeError) as err:
        print(f"relmon report: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    print(f"report written to {path}")
    return EXIT_OK


def cmd_trend(args: argparse.Namespace) -> int:
    if args.figure:
        require("matplotlib", "relmon trend --figure")
    try:
        from relmon.report.trend import format_trend, trend_figure, trend_table

        records = _load(args, "relmon trend")
        table = trend_table(records, args.method)
        estimates = None
        if args.calibration:
            from relmon.jobs import load_calibration
            from relmon.report.html import _estimates
            from relmon.report.trend import _window_key

            cal = load_calibration(args.calibration)
            notes: list[str] = []
            est, default = _estimates(records.assign(_window=_window_key(records)), cal, notes)
            for n in notes:
                print(f"relmon trend: {n}", file=sys.stderr)
            estimates = est[est["estimator"] == default]
            e = estimates.set_index("window").reindex(table["window"])
            table[f"estimate ({default})"] = e["estimate"].to_numpy()
            table["estimate_lower"] = e["lower"].to_numpy()
            table["estimate_upper"] = e["upper"].to_numpy()
        text = format_trend(table)
        if estimates is not None:
            extra = table[[c for c in table.columns if c.startswith("estimate")]]
            text += "\n\n" + extra.assign(window=table["window"]).to_string(
                index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
        print(text)
        if args.csv:
            from pathlib import Path

            Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.csv, index=False)
            print(f"table written to {args.csv}")
        if args.figure:
            trend_figure(table, args.figure, estimates=estimates)
            print(f"figure written to {args.figure}")
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError) as err:
        print(f"relmon trend: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


__all__ = ["add_commands", "cmd_report", "cmd_trend"]
