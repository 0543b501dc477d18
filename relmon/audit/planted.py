"""Small classifiers trained on planted shortcuts: the models the audit is evaluated and tested on.

``scripts/evaluate_shortcuts.py`` (issue 19's evaluation), the tests and the shortcut-aware
calibration's evaluation train the same two architectures on Fashion-MNIST-sized images
``(N, 1, 28, 28)`` in [0, 1], with the same schedule, so this module holds them once:

- :func:`build_cnn`: ``cnn`` (2 conv + linear) or ``bncnn`` (the same with BatchNorm), widths given;
- :func:`train_classifier`: Adam, cross-entropy, seeded shuffling, on normalised inputs;
- :func:`shortcut_model`: trains (or loads from a cache folder) a model on images with a planted cue
  (:func:`relmon.data.shortcuts.plant`, 90 % of the images) or a clean control. The cache file name
  holds every setting that changes the weights (architecture, kind, training-set size, epochs, seed,
  widths, learning rate, planted share), and it is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ARCHS = ("cnn", "bncnn")


def build_cnn(arch: str = "cnn", widths: tuple[int, int] = (16, 32), num_classes: int = 10,
              side: int = 28) -> nn.Sequential:
    """``conv3x3(w0) [BN] ReLU maxpool2 conv3x3(w1) [BN] ReLU maxpool2 flatten linear`` for 1-channel
    ``side × side`` inputs (``side`` a multiple of 4)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    bn = arch == "bncnn"
    w0, w1 = widths
    return nn.Sequential(
        nn.Conv2d(1, w0, 3, padding=1), *([nn.BatchNorm2d(w0)] if bn else []), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w0, w1, 3, padding=1), *([nn.BatchNorm2d(w1)] if bn else []), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(w1 * (side // 4) ** 2, num_classes),
    )


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, mean: float, std: float,
                     epochs: int = 2, lr: float = 2e-3, batch_size: int = 128, seed: int = 0) -> nn.Module:
    """Train ``model`` in place on raw ``x`` ``(N, 1, H, W)`` in [0, 1] (normalised by ``mean``/``std``)
    and labels ``y``; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    xn = (x - mean) / std
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xn[b]), y[b]).backward()
            opt.step()
    model.eval()
    return model


def cache_name(arch: str, kind: str | None, train_n: int, epochs: int, seed: int,
               widths: tuple[int, int] = (16, 32), lr: float = 2e-3, p: float = 0.9) -> str:
    """The cache file name: every setting that changes the trained weights."""
    return (f"{arch}_{kind or 'control'}_n{train_n}_e{epochs}_s{seed}_w{widths[0]}-{widths[1]}"
            f"_lr{lr:g}_p{p:g}.pt")


def shortcut_model(arch: str, kind: str | None, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 2,
                   seed: int = 0, widths: tuple[int, int] = (16, 32), lr: float = 2e-3, p: float = 0.9,
                   cache: str | Path | None = None) -> nn.Module:
    """A model trained on raw ``x`` ``(N, 1, 28, 28)`` with ``kind``'s cue planted in a share ``p`` of the
    images (``kind=None``: a control on the clean images), with Fashion-MNIST's preprocessing attached.
    With ``cache``, the weights are read from (or written to) ``cache/<cache_name(...)>``."""
    from relmon.data.fashion_mnist import MEAN, STD
    from relmon.data.shortcuts import plant
    from relmon.preprocessing import Preprocessing, attach_preprocessing

    torch.manual_seed(seed)  # the initial weights
    model = build_cnn(arch, widths, side=int(x.shape[-1]))
    path = None if cache is None else Path(cache) / cache_name(arch, kind, len(x), epochs, seed, widths, lr, p)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        xt = x if kind is None else plant(x, y, kind, p=p, seed=11 + seed)
        train_classifier(model, xt, y, mean=MEAN, std=STD, epochs=epochs, lr=lr, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)  # atomic: a reader never sees half a file
    return attach_preprocessing(model, Preprocessing(MEAN, STD))


__all__ = ["ARCHS", "build_cnn", "cache_name", "shortcut_model", "train_classifier"]
