"""Loading models: the embedded defaults, a user's ``package.module:factory`` with a weights-only
checkpoint, and Lightning checkpoints. Every model returned carries its :class:`Preprocessing`."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pickle
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from relmon.data.fashion_mnist import MEAN, STD
from relmon.identity import ModelInfo, model_info, set_model_info, weights_hash  # noqa: F401 (re-exported)
from relmon.identity import attach_info as _attach_info
from relmon.models.architectures import SmallCNN, SmallVGG
from relmon.preprocessing import Preprocessing, attach_preprocessing

ARCHITECTURES = {"SmallCNN": SmallCNN, "SmallVGG": SmallVGG}
FASHION_MNIST_PREPROCESSING = Preprocessing(mean=(MEAN,), std=(STD,), low=0.0, high=1.0)
DEFAULT_MODEL = "fmnist_cnn"


#: Attribute a model may carry to declare its input size (an int, or (height, width)).
INPUT_SIZE_ATTRIBUTE = "relmon_input_size"


def declared_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size ``(H, W)`` the model declares in its ``relmon_input_size`` attribute (None when it
    declares none or an unusable one)."""
    size = getattr(model, INPUT_SIZE_ATTRIBUTE, None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def _weights_dir():
    return resources.files("relmon.models").joinpath("weights")


def manifest() -> dict:
    """The manifest of the shipped weights: models, their test accuracy and the checkpoint series."""
    return json.loads(_weights_dir().joinpath("manifest.json").read_text())


def _load_error(path, err: BaseException, fix: str) -> ValueError:
    """A clear error for a checkpoint torch.load(weights_only=True) refused, without torch's advice to
    load it with weights_only=False (that would run the pickled code)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        what = f"pickled Python object(s) ({found.group(1)})" if found else "pickled Python object(s)"
        return ValueError(
            f"{path} is not a weights-only checkpoint: it holds {what}, not only tensors; relmon never "
            f"unpickles objects (it reads checkpoints with torch.load(weights_only=True)); fix: {fix}"
        )
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if detail:
        text = detail.group(1)  # torch's advice around it (load with weights_only=False) is left out
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return ValueError(
        f"could not read {path} as a weights-only checkpoint ({type(err).__name__}: {first[:200]}); the file "
        f"is not a torch.save file or is damaged; fix: {fix}"
    )


_STATE_DICT_FIX = "save the weights with torch.save(model.state_dict(), path)"


def _load_state_dict(path: str | os.PathLike) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; fix: give the path of the weights file") from None
    except IsADirectoryError:
        raise ValueError(f"checkpoint {str(path)!r} is a directory; fix: give the path of the weights file") from None
    except Exception as err:  # pickle of arbitrary objects, corrupt file, ...
        raise _load_error(path, err, _STATE_DICT_FIX) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
    return obj


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def list_embedded() -> list[str]:
    return sorted(manifest()["models"])


def load_embedded(name: str = DEFAULT_MODEL) -> nn.Module:
    """One of the shipped Fashion-MNIST models (``fmnist_cnn``, ``fmnist_vgg``), in eval mode."""
    entries = manifest()["models"]
    if name not in entries:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    model = ARCHITECTURES[entry["arch"]]()
    ref = _weights_dir().joinpath(entry["file"])
    with resources.as_file(ref) as path:
        model.load_state_dict(_load_state_dict(path))
        version = _digest(path)
    model.eval()
    attach_preprocessing(model, FASHION_MNIST_PREPROCESSING)
    return _attach_info(model, ModelInfo(name, version, entry.get("test_accuracy")))


@dataclass(frozen=True)
class Checkpoint:
    name: str
    step: int
    epoch: float
    test_accuracy: float
    file: str

    def load(self) -> nn.Module:
        model = ARCHITECTURES[manifest()["models"][self.name]["arch"]]()
        with resources.as_file(_weights_dir().joinpath(self.file)) as path:
            model.load_state_dict(_load_state_dict(path))
        model.eval()
        attach_preprocessing(model, FASHION_MNIST_PREPROCESSING)
        return _attach_info(model, ModelInfo(self.name, f"step{self.step}", self.test_accuracy))


def checkpoint_series(name: str = DEFAULT_MODEL) -> list[Checkpoint]:
    """The checkpoints saved while training ``name``, in training order, with their test accuracy."""
    series = manifest()["checkpoints"]
    if name not in series:
        raise ValueError(f"no checkpoint series for {name!r}; series exist for: {', '.join(sorted(series))}")
    return [Checkpoint(name=name, **c) for c in series[name]]


def _import_object(spec: str):
    if ":" not in spec:
        raise ValueError(f"expected 'package.module:factory', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} from {spec!r}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def _check_factory(obj, spec: str):
    """Refuse anything but an ``nn.Module`` class or a Python function before calling it."""
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise TypeError(
                f"model factory {spec!r} is the class {obj.__name__}, not a torch.nn.Module subclass; "
                "fix: name a function or nn.Module class that builds your model"
            )
        return obj
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj
    what = "a built-in" if inspect.isbuiltin(obj) else f"a {type(obj).__name__}"
    if not callable(obj):
        what = f"a non-callable {type(obj).__name__}"
    raise TypeError(
        f"model factory {spec!r} is {what}, not a Python function or nn.Module class; relmon calls only "
        "model factories; fix: set model to 'package.module:function' returning a torch.nn.Module"
    )


def build_model(factory: str | object, **factory_kwargs) -> nn.Module:
    """Call the model factory ``package.module:factory`` (a function or ``nn.Module`` class) and check
    that it returns an ``nn.Module``; anything else is refused with a clear error."""
    spec = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    fn = _check_factory(_import_object(factory) if isinstance(factory, str) else factory, spec)
    try:
        model = fn(**factory_kwargs)
    except (KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ValueError(f"model factory {spec!r} tried to exit the process ({err!r}); fix: name a model factory") from None
    except TypeError as err:
        raise TypeError(
            f"model factory {spec!r} could not be called with model_kwargs {factory_kwargs}: {err}; "
            "fix: set model_kwargs to the factory's arguments"
        ) from err
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module; "
            "fix: name a factory that returns the model"
        )
    return model


def load_model(
    factory: str,
    checkpoint: str | os.PathLike | None = None,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
    strict: bool = True,
    **factory_kwargs,
) -> nn.Module:
    """Build a model from ``package.module:factory`` and load a weights-only ``checkpoint``.

    ``preprocessing`` declares the model's input space; without it operations that need the valid
    input range (uniform perturbation, ``lrp:epsilon_gamma_box``) raise an error naming the option.
    """
    model = build_model(factory, **factory_kwargs)
    version = None
    if checkpoint is not None:
        state = _load_state_dict(checkpoint)
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            raise ValueError(f"checkpoint {checkpoint} does not fit {factory}: {err}") from err
        version = _digest(checkpoint)
    model.eval()
    if preprocessing is not None:
        attach_preprocessing(model, preprocessing)
    return _attach_info(model, ModelInfo(name or factory.rpartition(":")[2], version or weights_hash(model)))


def load_lightning_checkpoint(
    module_class: str | type,
    checkpoint: str | os.PathLike,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
    model_attr: str | None = None,
    **kwargs,
) -> nn.Module:
    """The classifier of a LightningModule loaded from its checkpoint (``module_class.load_from_checkpoint``).

    The classifier is found by the rule of :mod:`relmon.models.classifier`, the same as the Lightning
    callback's: ``model_attr`` when given, else the module's ``model`` / ``net`` / ``classifier``
    attribute, else its ``forward`` over its layers with its torchmetrics children and loss modules
    left out (they are not layers). Without ``preprocessing``, the one the module declares
    (``relmon.attach_preprocessing`` or a ``preprocessing`` attribute) is used.

    Lightning checkpoints hold hyper-parameters next to the weights; relmon reads them with
    ``weights_only=True`` (plain types only), which is Lightning's default from 2.6 on.
    """
    from relmon.models.classifier import find_classifier
    from relmon.preprocessing import ATTRIBUTE

    cls = _import_object(module_class) if isinstance(module_class, str) else module_class
    if not hasattr(cls, "load_from_checkpoint"):
        raise TypeError(f"{cls!r} is not a LightningModule class (it has no load_from_checkpoint)")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"Lightning checkpoint {str(checkpoint)!r} does not exist or is not a file; fix: give the .ckpt path"
        )
    try:
        module = cls.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True, **kwargs)
    except (pickle.UnpicklingError, EOFError) as err:
        raise _load_error(checkpoint, err, "save it with Lightning's Trainer.save_checkpoint") from None
    except RuntimeError as err:
        if "Weights only load failed" in str(err) or "invalid load key" in str(err) or "zip archive" in str(err):
            raise _load_error(checkpoint, err, "save it with Lightning's Trainer.save_checkpoint") from None
        raise
    module.eval()
    try:
        classifier = find_classifier(
            module, model_attr, setting="model_attr: {attr}",
            fix="set model_attr (flag --model-attr) to the attribute of the LightningModule that holds the classifier",
        )
    except AttributeError as err:
        raise ValueError(str(err)) from None
    classifier.eval()
    if preprocessing is None:
        declared = getattr(module, "preprocessing", None)
        preprocessing = getattr(classifier, ATTRIBUTE, None) or getattr(module, ATTRIBUTE, None) or (
            declared if isinstance(declared, Preprocessing) else None
        )
    if preprocessing is not None:
        attach_preprocessing(classifier, preprocessing)
    label = name or (cls.__name__ if isinstance(cls, type) else str(cls))
    return _attach_info(classifier, ModelInfo(label, _digest(checkpoint)))


