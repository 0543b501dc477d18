"""Train relmon's embedded Fashion-MNIST models, reproducibly, and write them into the package.

    python scripts/train_embedded.py            # writes relmon/models/weights/ and relmon/data/sample/

Seeded (torch, NumPy, data order), single-threaded math for determinism. On 2 CPU cores it takes a
few minutes. Outputs:
- ``fmnist_cnn.pt`` (SmallCNN, 3 epochs) and its checkpoint series ``fmnist_cnn_step*.pt``, saved
  at growing intervals, most of them inside the first epoch, from the untrained model on;
- ``fmnist_vgg.pt`` (SmallVGG with BatchNorm, 2 epochs);
- ``manifest.json`` with each file's test accuracy on the full 10,000-image test set;
- the shipped sample: the first 2,000 test images with labels (``relmon/data/sample``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from relmon.data.fashion_mnist import load_fashion_mnist, to_tensor
from relmon.models.architectures import SmallCNN, SmallVGG

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "relmon" / "models" / "weights"
SAMPLE = ROOT / "relmon" / "data" / "sample"
CNN_CHECKPOINT_STEPS = (0, 4, 8, 15, 25, 40, 70, 120, 200, 330, 469, 938)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        correct += (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item()
    model.train()
    return correct / len(x)


def train(model, x, y, xt, yt, epochs, lr, seed, save_steps=(), prefix=None, batch_size=128):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    series, step = [], 0
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size

    def save_checkpoint():
        acc = accuracy(model, xt, yt)
        name = f"{prefix}_step{step:04d}.pt"
        torch.save(model.state_dict(), WEIGHTS / name)
        series.append({"step": step, "epoch": round(step / steps_per_epoch, 4), "test_accuracy": acc, "file": name})
        print(f"  step {step:5d}  test accuracy {acc:.4f}  -> {name}", flush=True)

    model.train()
    if 0 in save_steps:
        save_checkpoint()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
            if step in save_steps:
                save_checkpoint()
        print(f"  epoch {epoch + 1}: test accuracy {accuracy(model, xt, yt):.4f}", flush=True)
    model.eval()
    return series


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    SAMPLE.mkdir(parents=True, exist_ok=True)

    train_images, train_labels = load_fashion_mnist("train", args.data_root)
    test_images, test_labels = load_fashion_mnist("test", args.data_root)
    x, y = to_tensor(train_images), torch.from_numpy(train_labels)
    xt, yt = to_tensor(test_images), torch.from_numpy(test_labels)

    np.savez_compressed(SAMPLE / "fashion_mnist_test_2000.npz", images=test_images[:2000], labels=test_labels[:2000].astype(np.uint8))

    for old in WEIGHTS.glob("*.pt"):
        old.unlink()
    manifest = {"dataset": "Fashion-MNIST", "seed": args.seed, "models": {}, "checkpoints": {}}

    t0 = time.time()
    print("SmallCNN (3 epochs, Adam lr 1e-3)", flush=True)
    torch.manual_seed(args.seed)
    cnn = SmallCNN()
    series = train(cnn, x, y, xt, yt, epochs=3, lr=1e-3, seed=args.seed, save_steps=set(CNN_CHECKPOINT_STEPS), prefix="fmnist_cnn")
    torch.save(cnn.state_dict(), WEIGHTS / "fmnist_cnn.pt")
    manifest["models"]["fmnist_cnn"] = {"arch": "SmallCNN", "file": "fmnist_cnn.pt", "epochs": 3, "test_accuracy": accuracy(cnn, xt, yt)}
    manifest["checkpoints"]["fmnist_cnn"] = series
    print(f"  done in {time.time() - t0:.0f} s", flush=True)

    t0 = time.time()
    print("SmallVGG (2 epochs, Adam lr 1e-3)", flush=True)
    torch.manual_seed(args.seed + 1)
    vgg = SmallVGG()
    train(vgg, x, y, xt, yt, epochs=2, lr=1e-3, seed=args.seed + 1)
    torch.save(vgg.state_dict(), WEIGHTS / "fmnist_vgg.pt")
    manifest["models"]["fmnist_vgg"] = {"arch": "SmallVGG", "file": "fmnist_vgg.pt", "epochs": 2, "test_accuracy": accuracy(vgg, xt, yt)}
    print(f"  done in {time.time() - t0:.0f} s", flush=True)

    (WEIGHTS / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: v["test_accuracy"] for k, v in manifest["models"].items()}, indent=2))


if __name__ == "__main__":
    main()
