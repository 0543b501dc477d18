"""``relmon calibrate``, ``relmon monitor`` and ``relmon serve``: :func:`add_commands` registers them on
the ``relmon`` command's sub-parsers (``relmon monitor --help``).

Exit codes: 0 success; 2 usage error (unknown flag, missing argument); 3 bad input or configuration
(the message names the field or file and the fix), including a calibration made for another model;
4 output failure: the Pushgateway push failed after its retries or within its deadline, or the records
folder or textfile could not be written (the summary is still printed and the other outputs still
happen) or the /metrics endpoint could not be started; 5 interrupted by SIGTERM or SIGINT (the
finished batches' records are written, nothing is pushed); 6 empty window: nothing was scored
(sampling selected nothing, no readable input, or with only_new no new file) — the outputs are written
but the last-success time is not advanced; 7 run_timeout_seconds passed (like 5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import warnings

from relmon.config import ConfigError, add_config_flags, config_from_args
from relmon.exitcodes import (  # the one definition of the exit codes (re-exported here)  # noqa: F401
    EXIT_CODES_HELP,
    EXIT_EMPTY,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)

_CALIBRATE_FIELDS = [
    "model",
    "model_kwargs",
    "checkpoint",
    "lightning_module",
    "model_attr",
    "preprocessing",
    "classes",
    "model_name",
    "model_version",
    "calibration_data",
    "channels",
    "image_size",
    "methods",
    "region",
    "steps",
    "fraction",
    "sample_rate",
    "max_samples",
    "batch_size",
    "seed",
    "accelerator",
    "runner",
    "devices",
    "strategy",
    "num_nodes",
    "step_stride",
    "max_batch_bytes",
    "estimators",
    "calibration_n",
    "method_candidates",
    "method_table_n",
    "calibration_shifts",
    "calibration_severities",
]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (see deploy/relmon.example.yaml); flags override its values",
    )
    p.add_argument(
        "--progress",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON instead of a table: stdout holds only JSON (no progress bar; "
        "logs and warnings go to stderr)",
    )


def add_commands(subparsers) -> None:
    """Register ``calibrate``, ``monitor`` and ``serve`` on an ``add_subparsers()`` object."""
    cal = subparsers.add_parser(
        "calibrate",
        help="fit accuracy estimators and the drift reference on labelled data",
        description="Score labelled data (calibration_data: a folder with one sub-folder per class, or a "
        "CSV/Parquet manifest with columns path and label; the shipped Fashion-MNIST sample for the "
        "embedded models) as one clean window and one window per shift and severity, fit the accuracy "
        "estimators on these windows and keep the clean window as the drift reference. Writes a "
        "calibration folder for 'relmon monitor --calibration'.",
        epilog=EXIT_CODES_HELP,
    )
    cal.add_argument(
        "--out", default="out/calibration", help="calibration folder to write (default out/calibration)"
    )
    cal.add_argument("--input", dest="calibrate_input", help=argparse.SUPPRESS)
    _common(cal)
    add_config_flags(cal, _CALIBRATE_FIELDS)
    cal.set_defaults(func=cmd_calibrate)

    mon = subparsers.add_parser(
        "monitor",
        help="score one window of unlabelled inputs and export the metrics (the scheduled job)",
        description="Read one window of inputs (a folder, or the shipped sample optionally shifted), "
        "score its explanations (AOPC, entropy, ...) with the model, estimate accuracy and test drift "
        "against a calibration, then write/push the Prometheus metrics and print a summary table. Without "
        "--calibration the accuracy estimate is the mean max-softmax confidence and drift is not "
        "tested.",
        epilog=EXIT_CODES_HELP,
    )
    _common(mon)
    mon.add_argument(
        "--empty-ok",
        action="store_true",
        help="exit 0 instead of 6 when the window held nothing to score (e.g. a scheduled run with only_new "
        "and no new file), so a Kubernetes Job does not count it as failed; the summary still says so and "
        "the last-success time is still not advanced",
    )
    add_config_flags(mon)
    mon.set_defaults(func=cmd_monitor)

    srv = subparsers.add_parser(
        "serve",
        help="serve /metrics and re-run the monitor on an interval or when a folder changes",
        description="Long-running service: start the /metrics endpoint (--http-addr, --http-port), "
        "then re-run the monitor every --interval-seconds, or with --watch whenever the input folder "
        "changes. Stops after --max-iterations runs or on Ctrl-C.",
        epilog=EXIT_CODES_HELP,
    )
    _common(srv)
    add_config_flags(srv)
    srv.set_defaults(func=cmd_serve)


def _progress(args) -> bool:
    """Progress bar: off with --json, else --progress / --no-progress, default when stderr is a tty.
    The job runs with stdout redirected to stderr (:func:`_job_output`), so the bar never reaches stdout."""
    if getattr(args, "json", False) and not args.progress:
        return False
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


@contextlib.contextmanager
def _job_output():
    """While a job runs, anything printed to stdout (Lightning's progress bar and messages, a user
    model's prints) goes to stderr: stdout carries only the summary (the JSON with --json)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _setup() -> None:
    from relmon.names import EscapingFormatter, escape_text

    handler = logging.StreamHandler(sys.stderr)
    # control characters in a message (a file name holding a newline) are escaped: no forged log line
    handler.setFormatter(EscapingFormatter("relmon: %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    warnings.filterwarnings("ignore", message=".*treespec.*")
    if not getattr(warnings.formatwarning, "_relmon_escaped", False):
        plain = warnings.formatwarning

        def formatwarning(message, category, filename, lineno, line=None):
            return plain(escape_text(str(message)), category, filename, lineno, line)

        formatwarning._relmon_escaped = True
        warnings.formatwarning = formatwarning


def _error(command: str, err: BaseException, suffix: str = "") -> None:
    """``relmon COMMAND: error: ...`` on stderr, control characters escaped (one line per error)."""
    from relmon.names import escape_text

    print(f"relmon {command}: error: {escape_text(str(err))}{suffix}", file=sys.stderr)


def _partial_summary(err) -> dict:
    """What a run stopped by a signal (exit 5) or its deadline (exit 7) got done: printed with --json."""
    records = err.records
    scored = int(records["sample_id"].nunique()) if records is not None and len(records) else 0
    windows = sorted(records["window_id"].unique().tolist()) if records is not None and len(records) else []
    return {"status": "timeout" if err.reason == "timeout" else "interrupted", "exit_code": err.exit_code,
            **error_object(err.exit_code, err), "scored": scored, "window_ids": windows, "outputs": {"records": err.written}}


@contextlib.contextmanager
def _bulk_imports():
    """The job's imports (torch, pandas, ...) with the garbage collector off, then frozen: they make
    hundreds of thousands of long-lived objects, and the full collections they trigger find nothing to
    free (about 0.1-0.3 s of start-up). ``gc.freeze`` keeps them out of the job's later collections."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _job_failure(command: str, err: Exception, as_json: bool) -> int:
    """Print a failed job's summary (where it has one) and error, as ``relmon monitor`` and ``relmon merge``
    do; the exit code: empty window, job (output) error, bad input, or an output that cannot be written."""
    from relmon.data.file_listing import EmptyFolderError
    from relmon.jobs.errors import EmptyWindowError, JobError

    fix = ""
    if isinstance(err, (EmptyWindowError, JobError)):
        code = EXIT_EMPTY if isinstance(err, EmptyWindowError) else EXIT_OUTPUT
        _print(err.summary, as_json, error=error_object(code, err))  # --json: the summary and the error
    else:
        if isinstance(err, EmptyFolderError):  # no image at all under the input folder: an empty window
            code = EXIT_EMPTY
        elif isinstance(err, _input_errors()):
            code = EXIT_INPUT
        else:  # an OSError after the inputs were read: the output cannot be written
            code, fix = EXIT_OUTPUT, "; fix: " + _WRITABLE_FIX
        if as_json:
            print(_json(error_object(code, err, fix[len("; fix: "):] or None)), flush=True)
    _error(command, err, fix)
    return code


_WRITABLE_FIX = "make the output location writable, or choose another"


def error_object(code: int, err, fix: str | None = None) -> dict:
    """``{"error": {"code", "message", "fix"}}`` for ``--json`` (issue 21): the message's ``; fix: ...``
    tail (or ``fix``) becomes ``fix`` (null when the message names none)."""
    message, _, tail = str(err).partition("; fix: ")
    return {"error": {"code": int(code), "message": message, "fix": fix or tail or None}}


def _input_errors():
    from relmon.jobs import CalibrationMismatchError

    return (
        ConfigError,
        CalibrationMismatchError,
        ValueError,
        TypeError,
        FileNotFoundError,
        NotADirectoryError,
        KeyError,
    )


def _json(obj, indent: int | None = 2) -> str:
    """Strict JSON: NaN and infinities (e.g. no random-order entropy) become null."""
    d = json.loads(json.dumps(obj, default=str), parse_constant=lambda _: None)
    return json.dumps(d, indent=indent)


def _print(summary, as_json: bool, file=None, error: dict | None = None) -> None:
    """The summary (``--json``: as JSON, with the ``error`` object of a failed run added)."""
    if as_json:
        print(_json({**summary.to_dict(), **(error or {})}), file=file or sys.stdout, flush=True)
    else:
        print(summary.table(), file=file or sys.stdout, flush=True)


def cmd_calibrate(args: argparse.Namespace) -> int:
    _setup()
    try:
        from relmon.jobs import calibrate

        if args.calibrate_input is not None:
            raise ConfigError(
                "relmon calibrate reads labelled data from calibration_data (flag --calibration-data): a "
                "folder with one sub-folder per class, or a CSV/Parquet manifest with columns path and "
                "label; --input is the unlabelled data 'relmon monitor' scores; fix: pass "
                f"--calibration-data {args.calibrate_input}"
            )
        cfg = config_from_args(args)
        with _job_output():
            cal = calibrate(cfg, args.out, progress=_progress(args))
        from relmon.distributed import env_rank

        if env_rank() != 0:  # a DDP rank Lightning launched: rank 0 writes and prints the calibration
            return EXIT_OK
    except (*_input_errors(), OSError) as err:
        return _job_failure("calibrate", err, args.json)
    meta = cal.meta
    if args.json:
        print(_json(meta))
    else:
        print(
            f"calibration for model {meta['model']} (version {meta['model_version']}) written to {cal.path}"
        )
        data = meta.get("data", {})
        print(
            f"data: {data.get('kind')} {data.get('path')} ({data.get('n_images')} labelled images"
            + (", windows reuse images" if meta.get("windows_reuse_images") else "")
            + ")"
        )
        print(f"{'window':<22} {'accuracy':>8}")
        for window, acc in meta["window_accuracy"].items():
            print(f"{window:<22} {acc:8.3f}")
        print(
            f"estimators: {', '.join(meta['estimators'])}; drift reference: the clean window "
            f"({meta['n_per_window']} images)"
        )
        _print_method_table(meta.get("method_selection"), meta["methods"])
    return EXIT_OK


def _print_method_table(selection, methods) -> None:
    """The calibration's method table (issue 21 item 6) and its warnings (also logged) on stdout."""
    from relmon.jobs.method_choice import format_table

    if not selection:
        print(f"methods: {', '.join(methods)} (no method table: method_table_n is 0)")
        return
    print(f"methods compared on {selection['used']} clean images (paired AOPC gap to the random order over the "
          f"clean score, {selection['level']:.0%} intervals; * = used):")
    print(format_table(selection))
    configured = selection['configured'] if isinstance(selection['configured'], str) else ', '.join(selection['configured'])
    print(f"methods: {', '.join(methods)} (configured: {configured}; rule: {selection['rule']})")
    for text in selection.get("warnings") or []:
        print(f"WARNING: {text}")


def cmd_monitor(args: argparse.Namespace) -> int:
    _setup()
    with _bulk_imports():
        from relmon.data.file_listing import EmptyFolderError
        from relmon.jobs import JobError, run_monitor
        from relmon.jobs.monitor import EmptyWindowError
        from relmon.jobs.signals import RunInterrupted, stop_on_signals

    try:
        cfg = config_from_args(args)
        with stop_on_signals(), _job_output():
            summary = run_monitor(cfg, progress=_progress(args))
        from relmon.distributed import env_rank

        if env_rank() != 0:  # a DDP rank Lightning launched: rank 0 prints the window's summary
            return EXIT_OK
    except RunInterrupted as err:
        where = f"; records of the finished batches: {err.written}" if err.written else ""
        if args.json:
            print(_json(_partial_summary(err)), flush=True)
        print(f"relmon monitor: {err}{where}", file=sys.stderr)
        return err.exit_code
    except EmptyWindowError as err:
        if not args.empty_ok:
            return _job_failure("monitor", err, args.json)
        _print(err.summary, args.json)
        from relmon.names import escape_text

        print(f"relmon monitor: {escape_text(str(err))} (--empty-ok: exit 0)", file=sys.stderr)
        return EXIT_OK
    except EmptyFolderError as err:  # no image under the input folder: an empty window (exit 6)
        if not args.empty_ok:
            return _job_failure("monitor", err, args.json)
        from relmon.names import escape_text

        if args.json:
            print(_json({"scored": 0, "status": f"empty window: {err}"}), flush=True)
        print(f"relmon monitor: {escape_text(str(err))} (--empty-ok: exit 0)", file=sys.stderr)
        return EXIT_OK
    except (JobError, *_input_errors(), OSError) as err:
        return _job_failure("monitor", err, args.json)
    _print(summary, args.json)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    _setup()
    with _bulk_imports():
        from relmon.jobs import ServeError, serve
        from relmon.jobs.signals import stop_on_signals

    stop = threading.Event()
    out = sys.stdout  # with --json: one JSON object per line (each run's summary, then the totals)
    ready = sys.stderr if args.json else out
    try:
        cfg = config_from_args(args)
        with stop_on_signals(stop), _job_output():  # docker stop / kubectl delete send SIGTERM
            result = serve(
                cfg,
                stop=stop,
                on_ready=lambda ep: print(f"serving metrics at {ep.url}", file=ready, flush=True),
                on_run=lambda s: print(_json(s.to_dict(), None) if args.json else s.table(), file=out, flush=True),
                progress=_progress(args),
            )
    except KeyboardInterrupt:
        return EXIT_OK
    except ServeError as err:
        if args.json:
            print(_json(error_object(EXIT_OUTPUT, err)), flush=True)
        _error("serve", err)
        return EXIT_OUTPUT
    except (*_input_errors(), OSError) as err:
        return _job_failure("serve", err, args.json)
    if args.json:
        print(json.dumps({"runs": result.runs, "failures": result.failures, "empty": result.empty,
                          "interrupted": result.interrupted}))
    else:
        print(f"served {result.runs} run(s), {result.failures} failed, {result.empty} found nothing new")
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK
