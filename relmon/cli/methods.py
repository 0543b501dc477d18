"""``relmon methods [--check MODEL]``: the method ids, and whether relmon's LRP explains a given model exactly,
approximately or not at all (measured by :func:`relmon.explain.support.lrp_support`)."""

from __future__ import annotations

import argparse

from relmon.exitcodes import EXIT_INPUT, EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", metavar="MODEL",
                        help="judge LRP support for MODEL: a torchvision model name (built with weights=None, e.g. "
                             "vit_b_16) or a 'package.module:factory'; prints exact / approximate / refused with the "
                             "measured conservation, exits 3 if refused")
    parser.add_argument("--checkpoint", help="weights for a 'package.module:factory' model (weights_only)")
    parser.add_argument("--image-size", type=int, help="input side in pixels (default 224 for ViT, else 64)")
    parser.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
    parser.add_argument("--attention", choices=("attnlrp", "cp"), help="LRP attention rule (default attnlrp)")
    parser.add_argument("--composite", default="lrp", help="LRP method id (default lrp)")


def _build(spec: str, checkpoint: str | None):
    if ":" in spec:
        from relmon.models import load_model

        return load_model(spec, checkpoint)
    import torchvision.models as tvm

    if spec not in tvm.list_models(module=tvm):
        raise ValueError(f"unknown model {spec!r}: give a torchvision classification model name (e.g. resnet18, "
                         "vit_b_16) or 'package.module:factory'")
    return tvm.get_model(spec, weights=None).eval()


def run(args: argparse.Namespace) -> int:
    import relmon

    if not args.check:
        for m in relmon.available_methods():
            print(m)
        return EXIT_OK
    import torch

    from relmon.explain.support import lrp_support

    model = _build(args.check, args.checkpoint)
    size = args.image_size or (224 if "vit" in args.check.lower() else 64)
    options = {"attention": args.attention} if args.attention else {}
    torch.manual_seed(0)
    report = lrp_support(model, torch.randn(1, args.channels, size, size), args.composite, **options)
    print(f"{args.check}: LRP ({report.method}) {report.summary()}")
    if args.check.find(":") < 0:
        print("(weights=None: a trained model's figures differ; pass package.module:factory --checkpoint for yours)")
    return EXIT_INPUT if report.verdict == "refused" else EXIT_OK
