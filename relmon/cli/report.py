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


def add_commands(subparsers) -> None:
    """Register ``report`` and ``trend`` on an ``add_subparsers()`` object."""
    rep = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report for the windows in a records folder",
        description="Read every record file under RECORDS (the folder given to 'relmon monitor --records', "
        "or a RecordWriter's output) and write one static HTML file: heatmaps beside their inputs "
        "(--model and --input; --no-images leaves them out), mean MoRF and random curves (recomputed for "
        "the example inputs; else AOPC distributions), per-window AOPC, entropy, confidence, realised "
        "accuracy where labelled, and with --calibration the accuracy estimates with intervals, drift "
        "p-values and alarms and the calibration's validation table. Images are embedded; the page "
        "loads nothing from the network.",
    )
    rep.add_argument("records", help="records folder (searched recursively) or one records Parquet file")
    rep.add_argument("--out", default="out/report.html", help="HTML file to write (default out/report.html)")
    rep.add_argument("--calibration", metavar="FOLDER", help="calibration folder ('relmon calibrate --out')")
    rep.add_argument("--method", help="heatmap method to summarise (default: lrp if present)")
    rep.add_argument("--no-images", dest="images", action="store_false",
                     help="leave out the inputs and heatmaps (inputs can be private data)")
    rep.add_argument("--model", help="model for the example heatmaps and curves: an embedded name "
                     "(fmnist_cnn) or 'package.module:factory'; without it the page shows no heatmaps")
    rep.add_argument("--checkpoint", help="weights for a 'package.module:factory' model (weights_only)")
    rep.add_argument("--input", default="sample",
                     help="example inputs: 'sample' (the shipped Fashion-MNIST sample) or a folder of images")
    rep.add_argument("--channels", type=int, default=1, help="channels of the folder's images (1 or 3)")
    rep.add_argument("--image-size", type=int, help="resize folder images to this side")
    rep.add_argument("--examples", type=int, default=6, help="example inputs to explain (default 6)")
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


def _examples(args, records, calibration):
    import relmon
    from relmon.report.html import compute_examples

    if ":" in args.model:
        model = relmon.load_model(args.model, args.checkpoint)
    else:
        model = relmon.load_embedded(args.model)
    n = int(args.examples)
    if n < 1:
        raise ValueError(f"--examples must be >= 1, got {n}")
    if args.input == "sample":
        from relmon.jobs.inputs import sample_images

        images, _ = sample_images(n)
        source = f"the first {n} shipped Fashion-MNIST inputs"
    else:
        import torch

        from relmon.data.streams import BadSample, ImageFolderStream

        stream = ImageFolderStream(args.input, channels=args.channels, image_size=args.image_size)
        items = [stream[i] for i in range(len(stream))[: 4 * n]]
        good = [it["x"] for it in items if not isinstance(it, BadSample)][:n]
        if not good:
            raise ValueError(f"no readable image among the first files of {args.input!r}")
        images = torch.stack(good)
        source = f"{len(good)} inputs from {args.input}"
    meta = calibration.meta if calibration is not None else {}
    region = args.region or meta.get("region", 4)
    from relmon.config import MonitorConfig

    steps = args.steps or meta.get("steps", MonitorConfig().steps)
    methods = args.methods or sorted(m for m in records["method"].unique() if m != "random")
    return compute_examples(model, images, methods, region=region, steps=steps,
                            source=f"{source}, region {region}, {steps} steps")


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from relmon.report.html import write_report

        records = _load(args, "relmon report")
        calibration = None
        if args.calibration:
            from relmon.jobs import load_calibration

            calibration = load_calibration(args.calibration)
        examples = _examples(args, records, calibration) if (args.model and args.images) else None
        path = write_report(args.out, records, calibration=calibration, examples=examples,
                            images=args.images, method=args.method, title=args.title)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError) as err:
        print(f"relmon report: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    print(f"report written to {path}")
    return EXIT_OK


def cmd_trend(args: argparse.Namespace) -> int:
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
