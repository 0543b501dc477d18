"""The job's model: the one the config names, with its preprocessing and labels, and the checks of its
class names against its outputs."""

from __future__ import annotations

import copy
import warnings

import torch

from relmon.config import MonitorConfig
from relmon.identity import set_model_info
from relmon.models.loading import list_embedded, load_embedded, load_lightning_checkpoint, load_model
from relmon.preprocessing import ATTRIBUTE, get_preprocessing


def load_job_model(cfg: MonitorConfig):
    """The model the config declares, with its preprocessing and ``model``/``model_version`` labels.

    An embedded name (``fmnist_cnn``), or ``package.module:factory`` called with ``model_kwargs`` (the
    factory must be a function or ``nn.Module`` class returning an ``nn.Module``), loaded from a
    weights-only ``checkpoint`` or, with ``lightning_module``, from a Lightning checkpoint; its
    ``preprocessing`` attached. The version label defaults to a hash of the weights.
    """
    if not cfg.is_embedded:
        prep = cfg.preprocessing_spec()
        kwargs = dict(cfg.model_kwargs or {})
        if cfg.lightning_module is not None:
            model = load_lightning_checkpoint(
                cfg.lightning_module, cfg.checkpoint, preprocessing=prep, model_attr=cfg.model_attr, **kwargs
            )
        else:
            model = load_model(cfg.model, cfg.checkpoint, preprocessing=prep, **kwargs)
        if getattr(model, ATTRIBUTE, None) is None:
            raise ValueError(
                f"model {cfg.model!r} declares no preprocessing (its input space); fix: set preprocessing: "
                "{mean: [...], std: [...], low: 0.0, high: 1.0} in the config (raw pixels scaled to [0, 1])"
            )
        name = cfg.model_name or (cfg.lightning_module or cfg.model).rpartition(":")[2]
        model = set_model_info(model, name, cfg.model_version)
        if cfg.classes is not None and cfg.image_size is not None:
            check_classes(model, cfg.classes, torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size))
        return model
    if cfg.checkpoint is not None:
        raise ValueError(
            f"checkpoint applies to 'package.module:factory' models, not to the embedded "
            f"model {cfg.model!r}; fix: remove checkpoint or name a factory"
        )
    if cfg.model not in list_embedded():
        raise ValueError(
            f"unknown embedded model {cfg.model!r}; choose one of {list_embedded()} or give "
            "'package.module:factory'"
        )
    model = load_embedded(cfg.model)
    if cfg.model_name or cfg.model_version:
        model = set_model_info(model, cfg.model_name, cfg.model_version)
    if cfg.classes is not None:
        check_classes(model, cfg.classes, torch.zeros(1, 1, 28, 28))
    return model


def model_outputs(model, x) -> int:
    """Number of classes the model outputs, from one forward of ``x`` (raw images in [0, 1])."""
    prep = get_preprocessing(model, "checking the model's classes")
    with torch.no_grad():
        out = model(prep.normalize(x[:1].float()))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model returned {shape} for one image; relmon needs class scores shaped (batch, classes); "
            "fix: name a factory whose forward returns logits (for a Lightning checkpoint: set model_attr to "
            "the attribute of the LightningModule that holds the classifier)"
        )
    return int(out.shape[1])


def check_stream_classes(model, classes, stream) -> None:
    """:func:`check_classes` on the first readable item of ``stream`` (already normalised)."""
    counted = getattr(stream, "base", stream)  # only-new selections count on their base stream
    saved = {k: copy.copy(getattr(counted, k)) for k in ("errors", "bad_files") if hasattr(counted, k)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = []
        for i in range(min(len(stream), 16)):
            items.append(stream[i])
            if isinstance(items[-1], dict):
                break
    for k, v in saved.items():  # the scoring pass counts (and warns about) bad files once
        setattr(counted, k, v)
    for item in items:
        if isinstance(item, dict):
            check_classes(model, classes, item["x"].unsqueeze(0))
            return


def check_classes(model, classes, x, outputs: int | None = None) -> int:
    """Raise ``ValueError`` when ``classes`` does not match the model's output count on ``x`` (or
    ``outputs``, when the count is already known)."""
    k = model_outputs(model, x) if outputs is None else int(outputs)
    if classes is not None and len(classes) != k:
        raise ValueError(
            f"the config names {len(classes)} classes {list(classes)[:12]} but the model outputs {k} "
            "class scores; fix: list one class name per model output, in output order"
        )
    return k


__all__ = ["check_classes", "check_stream_classes", "load_job_model", "model_outputs"]
