"""``relmon audit``: the Clever-Hans audit of :func:`relmon.audit` from the command line.

Exit codes as the other jobs: 0 done (flagged or not: the verdict is in the output, not the code),
2 usage error, 3 bad input or configuration, 4 the HTML page could not be written.
"""

from __future__ import annotations

import argparse
import sys

_FIELDS = ["model", "model_kwargs", "checkpoint", "lightning_module", "preprocessing", "classes", "channels",
           "image_size", "methods", "region", "batch_size", "seed"]


def add_commands(subparsers) -> None:
    from relmon.config import add_config_flags

    p = subparsers.add_parser(
        "audit",
        help="look for Clever-Hans shortcuts: per-class relevance maps, suspect regions, SpRAy clusters",
        description="Explain every image for its predicted class (the first of 'methods'), report per class "
        "where the positive relevance sits against each region's pixel share, flag suspect regions "
        "(share >= pixel share + --min-excess and >= --min-lift x pixel share), and cluster each class's "
        "heatmaps with SpRAy (spectral clustering, eigengap). DATA is a class-folder tree or CSV/Parquet "
        "manifest (labelled), a flat folder of images (unlabelled), or 'sample' (default: calibration_data "
        "from the config, else the shipped sample). The suspect regions go into the config's suspect_regions.",
    )
    p.add_argument("data", nargs="?", help="images to audit (see above)")
    p.add_argument("--config", metavar="FILE", help="YAML config file; flags override its values")
    p.add_argument("--out", metavar="HTML", help="write the audit page (self-contained HTML) there")
    p.add_argument("--json", action="store_true",
                   help="print {flagged, suspect_regions, per_class, clusters, settings} as JSON")
    p.add_argument("--min-excess", type=float, default=None, help="suspect rule: share - pixel share (default 0.15)")
    p.add_argument("--min-lift", type=float, default=None, help="suspect rule: share / pixel share (default 2)")
    p.add_argument("--border", type=int, default=None,
                   help="border rings of widths 1..N pixels are candidates (default region // 2; 0: none)")
    p.add_argument("--corner", type=int, default=None,
                   help="corner blocks of N x N pixels are candidates (default 2 * region; 0: none)")
    p.add_argument("--max-clusters", type=int, default=None, help="SpRAy: most clusters per class (default 8)")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="SpRAy: images clustered per class, a seeded subsample (default 500)")
    add_config_flags(p, _FIELDS)
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from relmon.cli.jobs import _input_errors, _json
    from relmon.config import config_from_args
    from relmon.exitcodes import EXIT_INPUT, EXIT_OK, EXIT_OUTPUT

    try:
        import relmon
        from relmon.audit import AuditError

        cfg = config_from_args(args)
        data = args.data or cfg.calibration_data or "sample"
        options = {k: getattr(args, k) for k in ("min_excess", "min_lift", "border", "corner", "max_clusters",
                                                        "max_per_class")
                   if getattr(args, k) is not None}
        result = relmon.audit(None, data, config=cfg, **options)
    except (AuditError, *_input_errors()) as err:
        print(f"relmon audit: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    if args.out:
        try:
            from relmon.audit import write_audit_html

            write_audit_html(args.out, result)
        except OSError as err:
            print(f"relmon audit: error: cannot write {args.out} ({err}); fix: choose a writable path",
                  file=sys.stderr)
            print(_json(result.to_dict()) if args.json else result.table())
            return EXIT_OUTPUT
    print(_json(result.to_dict()) if args.json else result.table())
    if args.out and not args.json:
        print(f"audit page written to {args.out}")
    return EXIT_OK
