"""The CUDA paths of relmon against the CPU: the monitoring job, the validation callback, the AOPC engine.

They skip without CUDA (the only skips CI allows) and run in ``benchmarks/gpu_check.sh`` on a GPU
machine. ``RELMON_GPU_TEST_DEVICE=cpu`` runs the same code with the CPU standing in for the GPU, to
check the tests themselves on a machine without one.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

import relmon
from relmon.data import load_sample, to_tensor
from relmon.models import load_embedded
from relmon.perturbation import region_perturbation

DEVICE = os.environ.get("RELMON_GPU_TEST_DEVICE", "cuda")
ACCELERATOR = "gpu" if DEVICE == "cuda" else DEVICE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA device (run benchmarks/gpu_check.sh there)"),
]


def _images(n: int) -> torch.Tensor:
    images, _ = load_sample()
    return to_tensor(images[:n])


class _DeviceSeen:
    """Forward pre-hook that records the device types a module's inputs were on."""

    def __init__(self, module: torch.nn.Module):
        self.types: set[str] = set()
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.types.add(args[0].device.type)


@pytest.mark.parametrize("runner", ["plain", "lightning"])
def test_monitor_job_on_the_device_matches_cpu(runner):
    x = _images(48)
    out = {}
    for accelerator in ("cpu", ACCELERATOR):
        model = load_embedded("fmnist_cnn")
        seen = _DeviceSeen(next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)))
        summary, records = relmon.monitor(model, x, accelerator=accelerator, batch_size=16, seed=3, runner=runner)
        seen.handle.remove()
        assert seen.types == {DEVICE if accelerator != "cpu" else "cpu"}, (accelerator, seen.types)
        # the caller's model is where it was: a later CPU forward (calibrate, a class check) must work
        assert {p.device.type for p in model.parameters()} == {"cpu"}, (runner, accelerator)
        model(x[:2])
        out[accelerator] = records.set_index(["sample_id", "method"]).sort_index()
    cpu, dev = out["cpu"], out[ACCELERATOR]
    assert len(cpu) == len(dev) == 2 * 48  # the method and the random order for every image
    assert (cpu["pred"] == dev["pred"]).all()
    np.testing.assert_allclose(dev["confidence"], cpu["confidence"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dev["aopc"], cpu["aopc"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dev["entropy_bits"].dropna(), cpu["entropy_bits"].dropna(), rtol=1e-3, atol=1e-3)


def test_validation_callback_on_the_device_matches_cpu():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from relmon.lightning import HeatmapQualityCallback

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = load_embedded("fmnist_cnn")

        def forward(self, x):
            return self.model(x)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    images, labels = load_sample()
    loader = DataLoader(TensorDataset(to_tensor(images[:64]), torch.as_tensor(labels[:64]).long()), batch_size=16)
    values = {}
    for accelerator in ("cpu", ACCELERATOR):
        module = Classifier()
        callback = HeatmapQualityCallback(max_samples=32, seed=1)
        trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, callbacks=[callback])
        trainer.validate(module, loader, verbose=False)
        assert trainer.strategy.root_device.type == (DEVICE if accelerator != "cpu" else "cpu")
        values[accelerator] = dict(callback.last_values)
    assert values["cpu"].keys() == values[ACCELERATOR].keys() and values["cpu"]
    for key, value in values["cpu"].items():
        assert values[ACCELERATOR][key] == pytest.approx(value, rel=1e-3, abs=1e-3), key


def test_aopc_engine_fp32_equals_cpu_and_bf16_channels_last_stays_close(exact_fp32):
    model = load_embedded("fmnist_vgg")
    x = _images(16)
    heat = relmon.explain(model, x, "lrp:epsilon_0_01").sum(1)
    opts = dict(region=4, steps=12, seed=5)
    cpu = region_perturbation(model, x, heat, **opts)
    # exact_fp32: TF32 off (with it on, as PyTorch's default for convolutions, an H200 moved these
    # curves by up to 0.0027, 0.9 % relative)
    dev_model, dx, dh = model.to(DEVICE), x.to(DEVICE), heat.to(DEVICE)
    fp32 = region_perturbation(dev_model, dx, dh, **opts)
    bf16 = region_perturbation(dev_model.to(memory_format=torch.channels_last), dx, dh,
                               autocast_dtype=torch.bfloat16, channels_last=True, **opts)
    model.cpu()
    torch.testing.assert_close(fp32.curves.cpu(), cpu.curves, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fp32.aopc.cpu(), cpu.aopc, rtol=1e-4, atol=1e-4)
    # bf16 keeps 8 bits of mantissa: logits agree to a few percent of their spread, and the
    # window's mean AOPC (what the monitor reports) to well under its sampling error
    spread = float(cpu.curves.std())
    assert float((bf16.curves.float().cpu() - cpu.curves).abs().max()) < 0.05 * spread + 0.05
    assert abs(float(bf16.aopc.float().mean()) - float(cpu.aopc.mean())) < 0.1 * float(cpu.aopc.std() / 4)


def test_records_of_the_device_run_are_plain_cpu_values():
    model = load_embedded("fmnist_cnn")
    summary, records = relmon.monitor(model, _images(16), accelerator=ACCELERATOR, batch_size=8)
    assert isinstance(records, pd.DataFrame) and len(records) == 32
    for column in ("aopc", "confidence", "score0"):
        assert records[column].dtype == np.float64 or records[column].dtype == np.float32, column
        assert np.isfinite(records[column].to_numpy(dtype=float)).all(), column
    assert summary.scored == 16
