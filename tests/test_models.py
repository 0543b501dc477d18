"""Embedded models, checkpoint series, and loading user models safely."""

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import relmon
from relmon.data import load_sample, to_tensor
from relmon.models import (
    MissingPreprocessingError,
    Preprocessing,
    checkpoint_series,
    get_preprocessing,
    input_bounds,
    load_embedded,
    load_lightning_checkpoint,
    load_model,
    manifest,
    model_info,
)


@torch.no_grad()
def sample_accuracy(model, n=2000):
    images, labels = load_sample()
    return (model(to_tensor(images[:n])).argmax(1) == torch.from_numpy(labels[:n])).float().mean().item()


@pytest.mark.parametrize("name", ["fmnist_cnn", "fmnist_vgg"])
def test_embedded_models_are_trained_and_carry_their_input_space(name):
    model = load_embedded(name)
    assert not model.training
    acc = sample_accuracy(model)
    # the manifest reports accuracy on the full 10k test set; the 2k sample is a subset of it
    assert acc > 0.8 and abs(acc - manifest()["models"][name]["test_accuracy"]) < 0.05
    lo, hi = input_bounds(model, 1)
    assert torch.allclose(lo, torch.tensor([(0 - 0.2860) / 0.3530])) and torch.allclose(hi, torch.tensor([(1 - 0.2860) / 0.3530]))
    info = model_info(model)
    assert info.name == name and len(info.version) == 12


def test_unknown_embedded_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="fmnist_cnn, fmnist_vgg"):
        load_embedded("resnet")


def test_checkpoint_series_spans_accuracies():
    series = checkpoint_series("fmnist_cnn")
    assert len(series) >= 8
    assert series[0].test_accuracy < 0.5
    assert sum(c.epoch <= 1.0 for c in series) >= len(series) // 2
    assert [c.step for c in series] == sorted(c.step for c in series)
    # manifest accuracies are real: reload the first and the last and measure on the sample
    first, last = series[0].load(), series[-1].load()
    assert sample_accuracy(first, 500) < 0.5 < 0.8 < sample_accuracy(last, 500)


def small_factory(hidden: int = 8):
    return nn.Sequential(nn.Flatten(), nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def test_load_model_from_import_path_and_weights_only_checkpoint(tmp_path):
    src = small_factory(hidden=5)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    prep = Preprocessing(mean=0.5, std=0.25)
    model = load_model("tests.test_models:small_factory", path, preprocessing=prep, hidden=5)
    x = torch.rand(3, 1, 2, 2)
    assert torch.equal(model(x), src(x)) and get_preprocessing(model) == prep
    with pytest.raises(ValueError, match="does not fit"):
        load_model("tests.test_models:small_factory", path, hidden=6)
    with pytest.raises(ValueError, match="package.module:factory"):
        load_model("tests.test_models.small_factory", path)
    with pytest.raises(ValueError, match="has no attribute"):
        load_model("tests.test_models:nothing_here", path)


class Payload:
    def __reduce__(self):  # what a malicious pickle would do; weights_only refuses to run it
        return (print, ("pickle code ran",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(ValueError, match="weights-only checkpoint"):
        load_model("tests.test_models:small_factory", path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_missing_preprocessing_names_the_fix():
    model = small_factory()
    with pytest.raises(MissingPreprocessingError, match="attach_preprocessing"):
        get_preprocessing(model, "uniform perturbation")


class TinyModule(pl.LightningModule):
    def __init__(self, hidden: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.net = small_factory(hidden)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_load_lightning_checkpoint(tmp_path):
    data = torch.utils.data.TensorDataset(torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,)))
    module = TinyModule(hidden=3)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_lightning_checkpoint(TinyModule, ckpt, preprocessing=Preprocessing())
    x = torch.rand(2, 1, 2, 2)
    # the classifier is the module's `net` (the callback's rule), built from the saved hyper-parameters
    assert torch.allclose(loaded(x), module(x)) and isinstance(loaded, nn.Sequential) and loaded[1].out_features == 3
    assert model_info(loaded).name == "TinyModule"
    r = relmon.explain(loaded, x, "lrp:epsilon_gamma_box")
    assert r.shape == x.shape
    assert json.dumps(model_info(loaded).__dict__)


def test_weights_hash_of_a_model_with_batchnorm_counters():
    """A BatchNorm's ``num_batches_tracked`` is a 0-dim int64 tensor: hashed like any other value."""
    from relmon.identity import weights_hash

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    before = weights_hash(model)
    assert len(before) == 12 and weights_hash(model) == before
    model[1].num_batches_tracked += 1  # only the 0-dim counter changes
    assert weights_hash(model) != before
