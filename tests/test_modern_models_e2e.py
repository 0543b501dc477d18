"""End to end with the model kinds relmon's LRP used to refuse: a tiny ViT, a ConvNeXt-style and an
EfficientNet-style network (torchvision's own blocks, defined here for 1-channel 28x28 images) through
``relmon.calibrate`` / ``relmon.monitor`` and the Lightning validation callback, with LRP heatmaps and no
refusal; the monitor's LRP AOPC equals the functional API's on the same images."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.models.vision_transformer import VisionTransformer

import relmon
from relmon.data import load_sample
from relmon.lightning import HeatmapQualityCallback
from relmon.models import FASHION_MNIST_PREPROCESSING


def vit():
    m = VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                          num_classes=10)
    m.conv_proj = nn.Conv2d(1, 32, kernel_size=7, stride=7)
    nn.init.normal_(m.heads.head.weight, std=0.2)  # torchvision starts with a zero head
    return m


def convnext():
    m = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    m.features[0][0] = nn.Conv2d(1, 16, kernel_size=2, stride=2)
    return m


def efficientnet():
    m = EfficientNet([MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(4, 3, 2, 16, 24, 2)], dropout=0.1,
                     num_classes=10)
    m.features[0][0] = nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)
    return m


KINDS = {"vit": vit, "convnext": convnext, "efficientnet": efficientnet}


@pytest.fixture(scope="module")
def data():
    images, labels = load_sample()
    return torch.from_numpy(images[:100]).float().div(255).unsqueeze(1), labels[:100]


@pytest.mark.parametrize("kind", list(KINDS))
def test_calibrate_and_monitor_accept_the_model(kind, data, tmp_path):
    x, y = data
    torch.manual_seed(0)
    model = KINDS[kind]().eval()
    settings = dict(region=7, steps=4, calibration_n=30, calibration_shifts=["gaussian_noise"],
                    calibration_severities=[5], estimators=["average_confidence", "atc"], seed=3,
                    preprocessing=FASHION_MNIST_PREPROCESSING, methods=["lrp"])
    cal = relmon.calibrate(model, (x, y), **settings)
    cal.save(tmp_path / "cal")
    summary, records = relmon.monitor(model, (x[:16], y[:16]), calibration=tmp_path / "cal", region=7, steps=4,
                                      methods=["lrp"])
    assert summary.scored == 16
    lrp = records[records["method"] == "lrp:epsilon_plus_flat"].sort_values("sample_id")
    assert len(lrp) == 16 and lrp["aopc"].notna().all()
    # the records are this model's: predicted class and explained logit on the normalised images
    xn = FASHION_MNIST_PREPROCESSING.normalize(x[:16])
    with torch.no_grad():
        logits = model(xn)
    ids = lrp["sample_id"].astype(int).to_numpy()
    assert (lrp["pred"].to_numpy() == logits.argmax(1).numpy()[ids]).all()
    torch.testing.assert_close(torch.as_tensor(lrp["score0"].to_numpy(), dtype=torch.float32),
                               logits.max(1).values[ids], rtol=1e-4, atol=1e-4)
    assert lrp["entropy_bits"].notna().all()


class _Lit(pl.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_lightning_callback_accepts_the_model(kind, data):
    x, y = data
    xn = FASHION_MNIST_PREPROCESSING.normalize(x[:32])
    loader = DataLoader(TensorDataset(xn, torch.as_tensor(y[:32])), batch_size=16)
    torch.manual_seed(0)
    callback = HeatmapQualityCallback(methods=("lrp",), max_samples=8, region=7, steps=4,
                                      preprocessing=FASHION_MNIST_PREPROCESSING)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                         num_sanity_val_steps=0, enable_checkpointing=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(_Lit(KINDS[kind]()), loader, loader)
    assert callback.last_values["relmon/n"] == 8
    value = callback.last_values["relmon/aopc/lrp_epsilon_plus_flat"]
    assert torch.isfinite(torch.as_tensor(float(value)))
