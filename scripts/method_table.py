"""Issue 21 item 6: the calibration's method table on several models, and what it costs.

For each model: the paired method table of :func:`relmon.jobs.method_choice.select_methods` on Fashion-MNIST
test images (``--first``.. ``--first + --n``; the embedded models were trained on the training split), at
the shipped protocol (region 4, steps 8: ~16 % of a 28x28 image). Models: the two embedded ones and
torchvision's ``resnet18`` (``weights=None``, a 1-channel stem, 10 classes) trained for ``--train-seconds``
on Fashion-MNIST training images. ``--timing`` also times ``relmon calibrate`` on the demo's settings
(embedded model, shipped sample, calibration_n 80, every shift) with ``method_table_n`` 0 and 128.

    OMP_NUM_THREADS=2 python scripts/method_table.py --n 256 --train-seconds 60 --timing
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from relmon.config import MonitorConfig
from relmon.data.fashion_mnist import MEAN, STD, load_fashion_mnist
from relmon.jobs.method_choice import format_table, select_methods
from relmon.models import Preprocessing, attach_preprocessing, load_embedded, set_model_info


def small_resnet18(seconds: float, seed: int = 0) -> tuple[nn.Module, float]:
    """torchvision resnet18 (weights=None) for 1x28x28 inputs, trained ``seconds`` on Fashion-MNIST train;
    returns (model, accuracy on test images 0..1999)."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    x, y = load_fashion_mnist("train")
    x = (torch.from_numpy(x).float().div(255).unsqueeze(1) - MEAN) / STD
    y = torch.from_numpy(y).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0, seen = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += 128
    model.eval()
    xt, yt = load_fashion_mnist("test")
    with torch.no_grad():
        pred = model((torch.from_numpy(xt[:2000]).float().div(255).unsqueeze(1) - MEAN) / STD).argmax(1)
    acc = float((pred.numpy() == yt[:2000]).mean())
    print(f"resnet18 (weights=None, 1-channel stem): {seen} training images in {seconds:.0f} s, "
          f"test accuracy {acc:.3f} on 2000 images", flush=True)
    attach_preprocessing(model, Preprocessing(mean=MEAN, std=STD, low=0.0, high=1.0))
    set_model_info(model, "resnet18_small", "trained")
    return model, acc


def table(name: str, model: nn.Module, images: torch.Tensor, cfg: MonitorConfig) -> None:
    from relmon.models import get_preprocessing

    sel = select_methods(cfg, model, images, get_preprocessing(model))
    print(f"\n== {name}: {sel['used']} of {sel['n_images']} images, {sel['seconds']:.1f} s; chosen {sel['chosen']} "
          f"({sel['rule']}); best {sel['best']}")
    print(format_table(sel))
    for w in sel["warnings"]:
        print("WARNING:", w)
    if sel["excluded"]:
        print("excluded:", sel["excluded"])


def timing(model_name: str, table_n: int) -> float:
    from relmon.jobs.calibrate_job import calibrate_model, sample_data

    cfg = MonitorConfig(calibration_n=80, method_table_n=table_n)
    model = load_embedded(model_name)
    t0 = time.perf_counter()
    calibrate_model(model, sample_data(), cfg)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--first", type=int, default=5000)
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_vgg", "resnet18"])
    p.add_argument("--timing", action="store_true")
    args = p.parse_args()
    xt, _ = load_fashion_mnist("test")
    images = torch.from_numpy(xt[args.first:args.first + args.n]).float().div(255).unsqueeze(1)
    cfg = MonitorConfig(region=4, steps=8)  # the shipped protocol; methods: auto
    for name in args.models:
        model = small_resnet18(args.train_seconds)[0] if name == "resnet18" else load_embedded(name)
        table(name, model, images, cfg)
    if args.timing:
        for n in (0, 128, 0, 128):
            print(f"demo calibration (fmnist_cnn, shipped sample, calibration_n 80) with method_table_n {n}: "
                  f"{timing('fmnist_cnn', n):.1f} s", flush=True)


if __name__ == "__main__":
    main()
