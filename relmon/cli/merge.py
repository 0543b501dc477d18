"""``relmon merge``: the window of a sharded run (``relmon monitor --shard I/N``) from all its parts."""

from __future__ import annotations

import argparse

MERGE_FIELDS = [
    "calibration", "allow_version_mismatch", "records", "stream", "run_id", "textfile", "pushgateway", "job",
    "push_timeout", "push_retries", "push_backoff", "push_username", "push_password_file", "push_password_env",
    "push_tls_ca_file", "push_tls_cert_file", "push_tls_key_file", "drift_alpha",
]


def add_merge_command(subparsers, common, epilog: str) -> None:
    """Register ``merge`` (``common`` adds --config/--progress/--json)."""
    from relmon.config import add_config_flags

    p = subparsers.add_parser(
        "merge",
        help="merge the parts of a sharded run into the window's summary, estimates, drift and metrics",
        description="Read every part-<k>.parquet of a run folder (written by 'relmon monitor --shard k/N "
        "--run-id ID'), refuse an incomplete or mixed run, then compute the window's summary, accuracy "
        "estimates and drift against --calibration from all parts as one run would, write "
        "RUN/summary.json and the textfile / push the metrics. The run folder is RUN, or "
        "<records>/<stream>/<run_id> from the config.",
        epilog=epilog,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="the run folder (default <records>/<stream>/<run_id>)")
    p.add_argument("--wait-seconds", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for missing parts before refusing the run (default 0)")
    common(p)
    add_config_flags(p, MERGE_FIELDS)
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from relmon.cli.jobs import _input_errors, _job_failure, _print, _setup
    from relmon.config import config_from_args
    from relmon.exitcodes import EXIT_OK

    _setup()
    try:
        from relmon.jobs.errors import EmptyWindowError, JobError
        from relmon.jobs.merge import run_merge

        cfg = config_from_args(args)
        summary = run_merge(cfg, args.run, wait_seconds=args.wait_seconds)
    except (EmptyWindowError, JobError, *_input_errors(), OSError) as err:
        return _job_failure("merge", err, args.json)
    _print(summary, args.json)
    return EXIT_OK
