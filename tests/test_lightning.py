"""Lightning integration: RelevanceMonitor (predict), RecordWriter, HeatmapQualityCallback, DDP."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
import torchmetrics
from conftest import write_sample_pngs
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import relmon
from relmon.complexity import heatmap_complexity
from relmon.data.streams import ImageFolderStream, StreamDataModule, fashion_mnist_stream
from relmon.lightning import (
    HeatmapQualityCallback,
    RecordWriter,
    RelevanceMonitor,
    padding_flags,
    read_records,
    selection_hash,
)
from relmon.lightning.images import heatmap_strip
from relmon.lightning.monitor import random_subset_hash
from relmon.models import FASHION_MNIST_PREPROCESSING, MissingPreprocessingError, load_embedded
from relmon.perturbation import region_perturbation
from relmon.records import RECORD_COLUMNS, RECORD_SCHEMA, make_records, validate_records

SETTINGS = dict(region=7, steps=16)
LRP = "lrp:epsilon_plus_flat"
LRP_KEY = "lrp_epsilon_plus_flat"  # the method id as a log key (TensorBoard rewrites ':')
DEFAULT_KEY = "lrp_epsilon_0_01"  # the callback's default method as a log key
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def model():
    return load_embedded("fmnist_cnn")


def _trainer(**kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    return pl.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _functional(model, x, ids, seed=0):
    """Per-sample reference values from the functional API."""
    expl = relmon.explain_full(model, x, "lrp")
    heat = relmon.to_heatmap(expl.relevance, expl.method)
    kw = dict(SETTINGS, seed=seed, sample_ids=ids, target=expl.target)
    morf = region_perturbation(model, x, heat, order="morf", **kw)
    rnd = region_perturbation(model, x, heat, order="random", **kw)
    return expl, heat, morf, rnd, heatmap_complexity(heat)


def test_predict_records_equal_functional_api_under_default_inference_mode(model):
    stream = fashion_mnist_stream(use_sample=True, n=24)
    monitor = RelevanceMonitor(model, **SETTINGS)
    trainer = _trainer()  # inference_mode left at its default (True)
    assert trainer.predict_loop.inference_mode
    out = trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=8))
    records = validate_records(pd.concat(out, ignore_index=True))
    assert list(records.columns) == list(RECORD_COLUMNS)
    assert len(records) == 48 and set(records["method"]) == {LRP, "random"}

    x = torch.stack([stream[i]["x"] for i in range(24)])
    labels = torch.tensor([stream[i]["label"] for i in range(24)])
    ids = [str(i) for i in range(24)]
    expl, _, morf, rnd, comp = _functional(model, x, ids)
    lrp = records[records["method"] == LRP].set_index("sample_id").loc[ids]
    rand = records[records["method"] == "random"].set_index("sample_id").loc[ids]
    probs = torch.softmax(expl.logits.double(), dim=1)
    top2 = probs.topk(2, dim=1).values
    np.testing.assert_array_equal(lrp["pred"], expl.target.numpy())
    np.testing.assert_allclose(lrp["confidence"], top2[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(lrp["margin"], (top2[:, 0] - top2[:, 1]).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(lrp["label"].to_numpy(dtype=np.int64), labels.numpy())
    np.testing.assert_array_equal(lrp["correct"].to_numpy(dtype=bool), (labels == expl.target).numpy())
    np.testing.assert_allclose(lrp["score0"], morf.score0.numpy(), rtol=1e-5)
    np.testing.assert_allclose(lrp["aopc"], morf.aopc.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rand["aopc"], rnd.aopc.numpy(), rtol=1e-5, atol=1e-5)
    for key in ("entropy_bits", "gini"):
        np.testing.assert_allclose(lrp[key].to_numpy(dtype=float), comp[key].numpy(), rtol=1e-5)
    for key in ("png_bytes", "jpeg_bytes"):
        np.testing.assert_array_equal(lrp[key].to_numpy(dtype=np.int64), comp[key].numpy())
    assert rand["entropy_bits"].isna().all() and lrp["aopc_lerf"].isna().all()

    summary = monitor.window_summary()
    assert summary[LRP]["n"] == 24 and summary["random"]["n"] == 24
    assert summary[LRP]["aopc"] == pytest.approx(float(morf.aopc.double().mean()), rel=1e-5)
    assert summary[LRP]["aopc_minus_random"] == pytest.approx(float((morf.aopc - rnd.aopc).double().mean()),
                                                              rel=1e-4, abs=1e-5)
    assert summary[LRP]["entropy_bits"] == pytest.approx(float(comp["entropy_bits"].double().mean()), rel=1e-5)
    sd = float(morf.aopc.double().std())
    half = summary[LRP]["aopc_ci_high"] - summary[LRP]["aopc"]
    assert half == pytest.approx(2.0687 * sd / np.sqrt(24), rel=1e-3)  # t(0.975, 23)
    assert summary[LRP]["aopc_ci_low"] < summary[LRP]["aopc"] < summary[LRP]["aopc_ci_high"]
    assert summary["_inputs"] == {"seen": 24, "bad": 0, "padding_skipped": 0}
    assert all(p.requires_grad for p in model.parameters())


def test_image_folder_stream_records_parquet_and_bad_file(model, tmp_path):
    folder = tmp_path / "imgs"
    write_sample_pngs(folder, 10, name="img{:02d}.png")
    (folder / "img05_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    stream = ImageFolderStream(folder, preprocessing=FASHION_MNIST_PREPROCESSING, stream="cam")
    out_dir = tmp_path / "records"
    monitor = RelevanceMonitor(model, lerf=True, keep_heatmaps=True, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _trainer(callbacks=[RecordWriter(out_dir)])
        trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=4), return_predictions=False)

    files = sorted(out_dir.glob("records-*.parquet"))
    assert files and all(pq.read_schema(f).equals(RECORD_SCHEMA, check_metadata=False) for f in files)
    records = read_records(out_dir)
    good = {str(folder / f"img{i:02d}.png") for i in range(10)}
    assert set(records["sample_id"]) == good
    assert len(records) == 20 and set(records["window_id"]) == {"cam:0"}
    assert records["label"].isna().all() and records["correct"].isna().all()
    lrp = records[records["method"] == LRP]
    assert lrp["aopc_lerf"].notna().all() and lrp["abpc"].notna().all()
    summary = monitor.window_summary()
    assert summary["_inputs"]["bad"] == 1 and summary[LRP]["n"] == 10

    # keep_heatmaps: one array per method next to the records, keyed by sample id
    saved = [np.load(f) for f in sorted(out_dir.glob("heatmaps-*.npz"))]
    assert sum(len(s["sample_id"]) for s in saved) == 10 and saved[0][LRP].shape[1:] == (28, 28)

    # a second line of defence: duplicated files are dropped on read
    dup = out_dir / "dup" / "records-copy.parquet"
    dup.parent.mkdir()
    dup.write_bytes(files[0].read_bytes())
    assert len(read_records(out_dir)) == 20
    assert len(read_records(out_dir, deduplicate=False)) > 20


def test_sample_rate_and_max_samples_are_deterministic(model):
    stream = fashion_mnist_stream(use_sample=True, n=16, window_size=8)
    expected = {str(i) for i in range(16) if selection_hash(5, str(i)) < 0.5}
    assert 0 < len(expected) < 16
    monitor = RelevanceMonitor(model, region=14, steps=4, sample_rate=0.5, seed=5)
    records = pd.concat(_trainer().predict(monitor, datamodule=StreamDataModule(stream, batch_size=5)))
    assert set(records["sample_id"]) == expected

    capped = RelevanceMonitor(model, region=14, steps=4, max_samples=3)
    records = pd.concat(_trainer().predict(capped, datamodule=StreamDataModule(stream, batch_size=5)))
    assert sorted(records["sample_id"].unique(), key=int) == ["0", "1", "2", "8", "9", "10"]
    assert capped.window_summary()["random"]["n"] == 6


def test_padding_flags_match_distributed_sampler():
    data = list(range(13))
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=1)
        order = list(sampler)
        flags = padding_flags(sampler, 0, 4) + padding_flags(sampler, 4, len(order) - 4)
        seen += [i for i, pad in zip(order, flags, strict=True) if not pad]
        assert sum(flags) == (1 if rank == 1 else 0)
    assert sorted(seen) == data  # every sample once, the repeated one dropped
    assert padding_flags(None, 0, 3) == [False] * 3


def test_records_schema_rejects_bad_frames():
    good = make_records(sample_id=["a"], window_id="w", model="m", model_version="v", pred=[1],
                        confidence=[0.9], softmax_entropy=[0.1], margin=[0.5], label=[-1], method="random",
                        score0=[2.0], aopc=[1.0], aopc_rel=[0.5])
    assert good["label"].isna().all() and good["correct"].isna().all()
    with pytest.raises(ValueError, match="columns mismatch"):
        validate_records(good.drop(columns=["aopc"]))
    with pytest.raises(ValueError, match="must not hold nulls"):
        validate_records(good.assign(sample_id=[None]))


class _Classifier(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.states = []

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def _state(self):
        return ([m.training for m in self.modules()], [p.requires_grad for p in self.parameters()],
                torch.is_inference_mode_enabled(), torch.is_grad_enabled())

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self.before = self._state()

    def on_validation_epoch_end(self):  # runs after the callbacks' hook
        self.states.append((self.before, self._state()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_callback_logs_functional_values_and_restores_model(tmp_path):
    model = load_embedded("fmnist_cnn")
    stream = fashion_mnist_stream(use_sample=True, n=32)
    x = torch.stack([stream[i]["x"] for i in range(32)])
    y = torch.tensor([stream[i]["label"] for i in range(32)])
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    module = _Classifier(model.train())
    callback = HeatmapQualityCallback(methods=("lrp",), max_samples=20, seed=2, step_stride=1, **SETTINGS)
    trainer = _trainer(max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0, enable_checkpointing=False,
                       logger=CSVLogger(tmp_path, name="run"), callbacks=[callback])
    trainer.fit(module, loader, loader)

    metrics = pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    row = metrics.dropna(subset=[f"relmon/aopc/{LRP_KEY}"]).iloc[-1]
    _, heat, morf, rnd, comp = _functional(model, x[:20], list(range(20)), seed=2)
    assert row["relmon/n"] == 20
    assert row[f"relmon/aopc/{LRP_KEY}"] == pytest.approx(float(morf.aopc.double().mean()), abs=1e-4)
    assert row[f"relmon/aopc_minus_random/{LRP_KEY}"] == pytest.approx(
        float((morf.aopc - rnd.aopc).double().mean()), abs=1e-4)
    assert row[f"relmon/entropy/{LRP_KEY}"] == pytest.approx(float(comp["entropy_bits"].double().mean()), abs=1e-4)

    (before, after), = module.states
    assert after == before and not any(after[0]) and all(after[1])  # the state Lightning's loop set
    assert module.training and all(p.requires_grad for p in module.parameters())

    # trainer.validate runs under torch.inference_mode(): same values, state restored too
    expected = dict(callback.last_values)
    trainer.validate(module, loader, verbose=False)
    (before, after) = module.states[-1]
    assert after == before and after[2]  # inference mode was on
    assert callback.last_values == pytest.approx(expected, abs=1e-6)


# -- the callback on ordinary LightningModules (torchmetrics children, preprocessing, loggers) -----------


class _LitCNN(pl.LightningModule):
    """An ordinary LightningModule: layers as attributes, torchmetrics children, a loss module."""

    def __init__(self, layout="layers", unsupported=False):
        super().__init__()
        torch.manual_seed(0)
        act = torch.nn.Tanh() if unsupported else torch.nn.ReLU()
        features = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), act,
                                       torch.nn.MaxPool2d(2))
        head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6 * 14 * 14, 10))
        if layout == "net":
            self.net = torch.nn.Sequential(features, head)
        elif layout == "custom":
            self.backbone_and_head = torch.nn.Sequential(features, head)
        elif layout == "layers":
            self.features, self.head = features, head
        self.layout = layout
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10)
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10)
        self.train_steps = 0

    def forward(self, x):
        if self.layout == "net":
            return self.net(x)
        if self.layout == "custom":
            return self.backbone_and_head(x)
        return self.head(self.features(x))

    def classifier(self):  # the same function as a plain nn.Module, for the reference values
        if self.layout == "net":
            return self.net
        if self.layout == "custom":
            return self.backbone_and_head
        return torch.nn.Sequential(self.features, self.head)

    def training_step(self, batch, batch_idx):
        self.train_steps += 1
        x, y = batch
        logits = self(x)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return self.loss_fn(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _digits_loaders(n=48, size=28):
    stream = fashion_mnist_stream(use_sample=True, n=n)
    x = torch.stack([stream[i]["x"] for i in range(n)])
    if size != 28:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor([stream[i]["label"] for i in range(n)])
    return x, y, DataLoader(TensorDataset(x, y), batch_size=16)


def _tensorboard_values(log_dir: Path) -> list:
    """Summary values in TensorBoard event files, read from the TFRecord framing with the Event proto."""
    import struct

    from tensorboardX.proto import event_pb2

    values = []
    for path in Path(log_dir).rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            values.extend(event.summary.value)
    return values


def _tensorboard_tags(log_dir: Path) -> set[str]:
    """Scalar tags in TensorBoard event files."""
    return {v.tag for v in _tensorboard_values(log_dir) if not v.HasField("image")}


class _ImageLogger(pl.loggers.Logger):
    """A user's own logger with ``log_image`` (the W&B / Neptune / MLflow signature): keeps what it gets."""

    def __init__(self):
        super().__init__()
        self.images = []

    name, version = "images", 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


@pytest.mark.parametrize("layout", ["layers", "net"])
def test_callback_on_lightning_module_with_torchmetrics_children(tmp_path, layout):
    from pytorch_lightning.loggers import TensorBoardLogger

    x, y, loader = _digits_loaders()
    module = _LitCNN(layout)
    callback = HeatmapQualityCallback(max_samples=12, seed=1, preprocessing=FASHION_MNIST_PREPROCESSING,
                                      log_images=3)
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb"), _ImageLogger()]
    trainer = _trainer(max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, enable_checkpointing=False,
                       logger=loggers, callbacks=[callback])
    trainer.fit(module, loader, loader)

    keys = set(callback.log_keys())
    assert keys == {f"relmon/{w}/{DEFAULT_KEY}" for w in ("aopc", "aopc_rel", "aopc_minus_random",
                                                           "aopc_rel_minus_random", "entropy")} | {"relmon/n"}
    csv = pd.read_csv(Path(loggers[0].log_dir) / "metrics.csv")
    assert {c for c in csv.columns if c.startswith("relmon/")} == keys
    assert {t for t in _tensorboard_tags(loggers[1].log_dir) if t.startswith("relmon/")} == keys
    assert "train_acc" in csv.columns and "val_acc" in csv.columns  # the module's own metrics still log

    # defaults on 28x28: region 4 (7x7 grid), L = round(0.16 * 49) = 8, stride 2
    assert (callback.region_used, callback.steps_used) == (4, 8)
    plain = relmon.attach_preprocessing(module.classifier().eval(), FASHION_MNIST_PREPROCESSING)
    expl = relmon.explain_full(plain, x[:12], "lrp:epsilon_0_01")
    heat = relmon.to_heatmap(expl.relevance, expl.method)
    kw = dict(region=4, steps=8, step_stride=2, seed=1, sample_ids=list(range(12)), target=expl.target)
    morf = region_perturbation(plain, x[:12], heat, order="morf", **kw)
    rnd = region_perturbation(plain, x[:12], heat, order="random", **kw)
    row = csv.dropna(subset=[f"relmon/aopc/{DEFAULT_KEY}"]).iloc[-1]
    assert row["relmon/n"] == 12
    assert row[f"relmon/aopc/{DEFAULT_KEY}"] == pytest.approx(float(morf.aopc.double().mean()), abs=1e-4)
    assert row[f"relmon/aopc_minus_random/{DEFAULT_KEY}"] == pytest.approx(
        float((morf.aopc - rnd.aopc).double().mean()), abs=1e-4)
    assert row[f"relmon/aopc_rel/{DEFAULT_KEY}"] == pytest.approx(float(morf.aopc_rel.double().mean()), abs=1e-5)
    assert row[f"relmon/aopc_rel_minus_random/{DEFAULT_KEY}"] == pytest.approx(
        float((morf.aopc_rel - rnd.aopc_rel).double().mean()), abs=1e-5)

    # the first 3 heatmaps as one image, to the logger with log_image and to TensorBoard's add_image
    from PIL import Image

    expected = heatmap_strip(heat[:3])
    assert expected.shape == (28, 3 * 28 + 2, 3)
    (key, images, step), = loggers[2].images
    assert key == f"relmon/heatmaps/{DEFAULT_KEY}" and step == trainer.global_step
    assert np.abs(images[0].astype(int) - expected).max() <= 1
    tb, = [v for v in _tensorboard_values(loggers[1].log_dir) if v.HasField("image")]
    assert tb.tag == key
    png = np.asarray(Image.open(io.BytesIO(tb.image.encoded_image_string)).convert("RGB"))
    assert np.abs(png.astype(int) - expected).max() <= 1


def test_callback_reads_preprocessing_from_module_and_names_what_it_accepts(tmp_path):
    _, _, loader = _digits_loaders(n=16)
    module = _LitCNN("net")
    fit = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
               enable_checkpointing=False)
    with pytest.raises(MissingPreprocessingError) as err:
        _trainer(callbacks=[HeatmapQualityCallback(max_samples=4)], **fit).fit(module, loader, loader)
    message = str(err.value)
    assert "HeatmapQualityCallback(preprocessing=relmon.Preprocessing(" in message
    assert "low=/high=" not in message and "perturbation='blur'" in message
    assert module.train_steps == 0  # refused at setup, before training

    module.preprocessing = FASHION_MNIST_PREPROCESSING  # declared by the LightningModule: accepted
    callback = HeatmapQualityCallback(max_samples=4)
    _trainer(callbacks=[callback], **fit).fit(module, loader, loader)
    assert callback.last_values["relmon/n"] == 4 and module.train_steps == 1

    # a perturbation that needs no range needs no preprocessing
    callback = HeatmapQualityCallback(max_samples=4, perturbation="blur")
    _trainer(callbacks=[callback], **fit).fit(_LitCNN("net"), loader, loader)
    assert callback.last_values["relmon/n"] == 4


def test_callback_refuses_unsupported_model_and_bad_geometry_before_training():
    _, _, loader = _digits_loaders(n=16)
    fit = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
               enable_checkpointing=False)
    prep = dict(preprocessing=FASHION_MNIST_PREPROCESSING)

    module = _LitCNN("layers", unsupported=True)
    with pytest.raises(relmon.UnsupportedModelError, match=r"Tanh") as err:
        _trainer(callbacks=[HeatmapQualityCallback(**prep)], **fit).fit(module, loader, loader)
    assert "train_acc" not in str(err.value) and "loss_fn" not in str(err.value)
    assert module.train_steps == 0

    for settings, message in (
        (dict(region=29), r"region=29 is larger than the validation images \(28x28\); choose region <= 28"),
        (dict(region=7, steps=17), r"steps=17 exceeds the 16 regions of a 28x28 image at region=7"),
    ):
        module = _LitCNN("net")
        with pytest.raises(ValueError, match=message):
            _trainer(callbacks=[HeatmapQualityCallback(**settings, **prep)], **fit).fit(module, loader, loader)
        assert module.train_steps == 0
        # with a sanity check the first validation batch is checked, still before training
        module = _LitCNN("net")
        with pytest.raises(ValueError, match=message):
            _trainer(callbacks=[HeatmapQualityCallback(**settings, **prep)], **dict(fit, num_sanity_val_steps=1)
                     ).fit(module, loader, loader)
        assert module.train_steps == 0

    # steps = the number of regions is allowed, and is what runs (never capped silently); the default
    # max_samples is 1 % of the validation epoch (16 items here), at least 8
    callback = HeatmapQualityCallback(region=7, steps=16, **prep)
    _trainer(callbacks=[callback], **fit).fit(_LitCNN("net"), loader, loader)
    assert (callback.region_used, callback.steps_used) == (7, 16)
    assert callback.samples_used == 8 and callback.last_values["relmon/n"] == 8

    with pytest.raises(ValueError, match="not both"):
        HeatmapQualityCallback(steps=4, fraction=0.5)


def test_callback_finds_classifier_or_names_the_attribute_to_set():
    callback = HeatmapQualityCallback()
    assert callback.resolve_classifier(_LitCNN("net")) is not None
    custom = _LitCNN("custom")
    wrapper = callback.resolve_classifier(custom)  # forward() over the layers, metrics and loss left out
    names = {name for name, _ in wrapper.named_children()}
    assert names == {"backbone_and_head"}
    assert HeatmapQualityCallback(model_attr="backbone_and_head").resolve_classifier(custom) is \
        custom.backbone_and_head
    with pytest.raises(AttributeError, match=r"model_attr='head'.*module attributes are \['backbone_and_head'\]"):
        HeatmapQualityCallback(model_attr="head").resolve_classifier(custom)
    with pytest.raises(AttributeError, match=r"model_attr='train_acc'"):
        HeatmapQualityCallback(model_attr="train_acc").resolve_classifier(custom)

    class NoForward(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 2)
            self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=2)

    with pytest.raises(AttributeError, match=r"Pass model_attr='<name>'.*\['body'\]"):
        callback.resolve_classifier(NoForward())


def _load_ddp_script():
    spec = importlib.util.spec_from_file_location("relmon_ddp_script", HERE / "ddp_script.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.integration
def test_ddp_two_processes_equal_single_process(tmp_path):
    n = 13  # odd: a padding sampler repeats one sample on rank 1
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(HERE / "ddp_script.py"), str(tmp_path / "ddp"), str(n), "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["world_size"] == 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_ddp_script().main(str(tmp_path / "single"), n, 1)
    single = json.loads((tmp_path / "single" / "result.json").read_text())

    assert ddp["records_samples"] == n and ddp["records_rows"] == 2 * n
    assert ddp["predict_padded"]["_inputs"]["padding_skipped"] == 1
    for run in ("predict", "predict_padded"):
        for method in (LRP, "random"):
            assert ddp[run][method]["n"] == n
            for key in ("aopc", "aopc_ci_low", "aopc_ci_high", "aopc_rel"):
                assert ddp[run][method][key] == pytest.approx(single["predict"][method][key], rel=1e-5)
        assert ddp[run][LRP]["aopc_minus_random"] == pytest.approx(single["predict"][LRP]["aopc_minus_random"],
                                                                   rel=1e-4)
        assert ddp[run]["_inputs"]["seen"] == n
    assert ddp["validate"]["relmon/n"] == n
    for key, value in single["validate"].items():
        assert ddp["validate"][key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_check.sh there)")
def test_auto_accelerator_uses_cuda_and_matches_cpu():
    stream = fashion_mnist_stream(use_sample=True, n=32)
    results = {}
    for accelerator in ("cpu", "auto"):
        model = load_embedded("fmnist_cnn")
        monitor = RelevanceMonitor(model, **SETTINGS)
        trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        out = trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=16))
        results[accelerator] = pd.concat(out, ignore_index=True).set_index(["sample_id", "method"]).sort_index()
        if accelerator == "auto":
            assert trainer.strategy.root_device.type == "cuda"
    cpu, gpu = results["cpu"], results["auto"]
    assert (cpu["pred"] == gpu["pred"]).all()
    np.testing.assert_allclose(gpu["aopc"], cpu["aopc"], rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# RelevanceMonitor cost options: step_stride, random_fraction, threads, reuse of the clean logits


def test_monitor_random_fraction_subset_and_paired_difference(model):
    stream = fashion_mnist_stream(use_sample=True, n=24)
    ids = [str(i) for i in range(24)]
    full = RelevanceMonitor(model, **SETTINGS)
    records = pd.concat(_trainer().predict(full, datamodule=StreamDataModule(stream, batch_size=8)))
    part = RelevanceMonitor(model, random_fraction=0.5, **SETTINGS)
    sub = pd.concat(_trainer().predict(part, datamodule=StreamDataModule(stream, batch_size=8)))
    chosen = [i for i in ids if random_subset_hash(0, i) < 0.5]
    assert 4 <= len(chosen) <= 20
    rand_full = records[records["method"] == "random"].set_index("sample_id")
    rand_sub = sub[sub["method"] == "random"].set_index("sample_id")
    assert sorted(rand_sub.index, key=int) == chosen
    # the subset's random rows are those of the full computation; the method rows are untouched
    np.testing.assert_allclose(rand_sub.loc[chosen, "aopc"], rand_full.loc[chosen, "aopc"], rtol=1e-6, atol=1e-6)
    lrp_full = records[records["method"] == LRP].set_index("sample_id").loc[ids]
    lrp_sub = sub[sub["method"] == LRP].set_index("sample_id").loc[ids]
    np.testing.assert_allclose(lrp_sub["aopc"], lrp_full["aopc"], rtol=1e-6, atol=1e-6)
    summary = part.window_summary()
    assert summary["random"]["n"] == len(chosen) and summary[LRP]["n"] == 24
    # paired differences over the subset (not the window's mean minus the subset's)
    expected = (lrp_full.loc[chosen, "aopc"] - rand_full.loc[chosen, "aopc"]).astype(float).mean()
    assert summary[LRP]["aopc_minus_random"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    paired = full.window_summary()[LRP]["aopc_minus_random"]
    assert paired == pytest.approx((lrp_full["aopc"] - rand_full.loc[ids, "aopc"]).astype(float).mean(), rel=1e-5)


def test_monitor_step_stride_threads_and_one_clean_forward(model):
    stream = fashion_mnist_stream(use_sample=True, n=6)
    x = torch.stack([stream[i]["x"] for i in range(6)])
    ids = [str(i) for i in range(6)]
    sizes, threads = [], []

    def hook(_module, inputs, _output):
        sizes.append(inputs[0].shape[0])
        threads.append(torch.get_num_threads())

    original = torch.get_num_threads()
    torch.set_num_threads(2)
    monitor = RelevanceMonitor(model, step_stride=4, threads=1, **SETTINGS)
    handle = model.register_forward_hook(hook)
    try:
        frame = monitor.score_batch(x, ids, ["w"] * 6)
        after = torch.get_num_threads()
    finally:
        handle.remove()
        torch.set_num_threads(original)
    assert after == 2 and set(threads) == {1}
    # the explanation pass (6 items) gives f(x^(0)); MoRF and random evaluate steps 4, 8, 12, 16 only
    # (probe forwards of one item aside)
    assert [s for s in sizes if s != 1] == [6, 6 * 4, 6 * 4]
    _, heat, _, _, _ = _functional(model, x, ids)
    strided = region_perturbation(model, x, heat, order="morf", step_stride=4, seed=0, sample_ids=ids, **SETTINGS)
    lrp = frame[frame["method"] == LRP].set_index("sample_id").loc[ids]
    np.testing.assert_allclose(lrp["aopc"], strided.aopc.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(step_stride=0), r"step_stride must be an int >= 1 \(1 evaluates every step\), got 0"),
    (dict(random_fraction=0.0), r"random_fraction must be in \(0, 1\]"),
    (dict(random_fraction=1.5), r"random_fraction must be in \(0, 1\]"),
    (dict(threads=0), r"threads must be None or a positive int \(torch threads\), got 0"),
    (dict(max_batch_bytes=-1), r"max_batch_bytes must be a positive int \(bytes per forward\), got -1"),
])
def test_monitor_cost_options_are_checked(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RelevanceMonitor(model, **kwargs)


def test_monitor_random_subset_may_miss_a_whole_batch(model):
    """With a small random_fraction a batch can hold no sample of the random subset: its heatmap rows
    are still written (no crash), and it has no random rows."""
    stream = fashion_mnist_stream(use_sample=True, n=4)
    x = torch.stack([stream[i]["x"] for i in range(4)])
    monitor = RelevanceMonitor(model, random_fraction=1e-9, region=7, steps=4)
    records = monitor.predict_step({"x": x, "sample_id": [f"s{i}" for i in range(4)]}, 0)
    assert set(records["method"]) == {"lrp:epsilon_plus_flat"} and len(records) == 4


def test_heatmap_strip_colours_signed_relevance():
    from relmon.lightning.images import heatmap_strip

    heat = torch.zeros(2, 4, 5)
    heat[0, 0, 0], heat[0, 1, 1], heat[1, 2, 3] = 2.0, -2.0, -0.5
    image = heatmap_strip(heat, gap=1)
    assert image.shape == (4, 11, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (255, 0, 0)  # the largest positive value: red
    assert tuple(image[1, 1]) == (0, 0, 255)  # its negative: blue
    assert tuple(image[2, 6 + 3]) == (0, 0, 255)  # each heatmap scaled by its own largest |value|
    assert image[3, 2].min() >= 250  # zero: white
    assert (image[:, 5] == 255).all()  # the gap
    with pytest.raises(ValueError, match=r"non-empty \(B, H, W\)"):
        heatmap_strip(torch.zeros(4, 5))


def test_callback_scores_the_random_order_once_per_sample_not_per_method():
    """Two methods: each is explained and perturbed once, the random order (which depends only on the seed
    and the sample id) runs once for both; the logged gaps pair each method with that one baseline."""
    _, _, loader = _digits_loaders(n=16)
    module = _LitCNN("net")
    sizes = []
    handle = module.net.register_forward_hook(lambda _m, inputs, _o: sizes.append(inputs[0].shape[0]))
    methods = ("lrp:epsilon_0_01", "sensitivity")
    callback = HeatmapQualityCallback(methods=methods, max_samples=8, step_stride=4, seed=3,
                                      preprocessing=FASHION_MNIST_PREPROCESSING, **SETTINGS)
    try:
        _trainer(callbacks=[callback], logger=False).validate(module, loader, verbose=False)
    finally:
        handle.remove()
    # validation steps (16 items), one explanation pass per method (8), then MoRF per method and one
    # random order, steps 4, 8, 12, 16 each (8 x 4); probe forwards of one item aside
    assert sorted(s for s in sizes if s != 1) == sorted([16, 8, 8, 8 * 4, 8 * 4, 8 * 4])
    plain = relmon.attach_preprocessing(module.net.eval(), FASHION_MNIST_PREPROCESSING)
    x = torch.cat([b[0] for b in loader])[:8]
    kw = dict(step_stride=4, seed=3, sample_ids=list(range(8)), **SETTINGS)
    target = relmon.explain_full(plain, x, methods[0]).target
    rnd = None
    for method in methods:
        expl = relmon.explain_full(plain, x, method, target=target)
        heat = relmon.to_heatmap(expl.relevance, expl.method)
        morf = region_perturbation(plain, x, heat, order="morf", target=target, **kw)
        rnd = rnd or region_perturbation(plain, x, heat, order="random", target=target, **kw)
        key = method.replace(":", "_")
        assert callback.last_values[f"relmon/aopc_minus_random/{key}"] == pytest.approx(
            float((morf.aopc - rnd.aopc).double().mean()), abs=1e-4)
        assert callback.last_values[f"relmon/aopc_rel_minus_random/{key}"] == pytest.approx(
            float((morf.aopc_rel - rnd.aopc_rel).double().mean()), abs=1e-5)
