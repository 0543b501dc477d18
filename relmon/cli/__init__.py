"""The ``relmon`` command: one parser, each sub-command in its own module, imported when it runs.

Nothing heavy (torch, zennit, Lightning) is imported to build the parser, so ``relmon --help`` and
``relmon COMMAND --help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys

from relmon.cli.audit import add_commands as add_audit_commands
from relmon.cli.jobs import add_commands
from relmon.cli.report import add_commands as add_report_commands
from relmon.exitcodes import EXIT_CODES_HELP, EXIT_INPUT, EXIT_USAGE
from relmon.extras import MissingExtraError


def _run_demo(args: argparse.Namespace) -> int:
    from relmon.cli.demo import run_demo

    return run_demo(args)


def _methods(args: argparse.Namespace) -> int:
    from relmon.cli.methods import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    import relmon

    parser = argparse.ArgumentParser(
        prog="relmon",
        description="Label-free monitoring of image classifiers by the quality of their explanations.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"relmon {relmon.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the main job end to end on the embedded model and shipped sample (no make needed)",
        description="1. calibrate the embedded model on the labelled shipped sample (once, cached in "
                    "--calibration); 2. monitor an unlabelled, noise-shifted window against it and print the "
                    "summary table (writes OUT/relmon.prom and OUT/records/); 3. explain the clean sample with "
                    "every heatmap method, print their AOPC and write OUT/heatmaps.png.",
    )
    demo.add_argument("--model", default="fmnist_cnn", help="embedded model (fmnist_cnn, fmnist_vgg)")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--calibration", default="out/calibration",
                      help="calibration folder, reused when it fits (default out/calibration)")
    demo.add_argument("--calibration-n", type=int, default=80, help="images per calibration window (default 80)")
    demo.add_argument("--calibration-shifts", nargs="+", metavar="SHIFT",
                      help="shifts of the calibration windows (default: all)")
    demo.add_argument("--shift", default="gaussian_noise", help="shift of the monitored window (default gaussian_noise)")
    demo.add_argument("--severity", type=int, default=3, help="its severity 1..5 (default 3)")
    demo.add_argument("--window-n", type=int, default=256, help="images in the monitored window (default 256)")
    demo.add_argument("--methods-only", action="store_true",
                      help="only step 3 (the heatmap methods; no calibration, no monitoring)")
    demo.add_argument("--n", type=int, default=128, help="step 3: images explained (default 128)")
    demo.add_argument("--grid", type=int, default=8, help="step 3: images shown in the grid (default 8)")
    demo.add_argument("--methods", nargs="+", help="step 3: method ids (default: all; see 'relmon methods')")
    demo.add_argument("--region", type=int, default=4, help="step 3: region side in pixels (default 4)")
    demo.add_argument("--steps", type=int, default=49, help="step 3: perturbation steps L (default 49, all 7x7 regions)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_run_demo)

    methods = sub.add_parser("methods", help="list the heatmap method ids; --check MODEL: LRP support of a model")
    from relmon.cli.methods import add_arguments as add_methods_arguments

    add_methods_arguments(methods)
    methods.set_defaults(func=_methods)
    add_commands(sub)  # calibrate, monitor, serve
    from relmon.cli.jobs import _common
    from relmon.cli.merge import add_merge_command

    add_merge_command(sub, _common, EXIT_CODES_HELP)  # merge (relmon/cli/merge.py)
    add_report_commands(sub)  # report, trend (relmon/cli/report.py)
    add_audit_commands(sub)  # audit (relmon/cli/audit.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except MissingExtraError as err:  # an optional dependency of this command is not installed
        print(f"relmon {args.command}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"relmon: error: {err}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
