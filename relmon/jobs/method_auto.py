"""``methods: auto`` resolved without measuring anything: the embedded models' method, a calibration's
choice, or the fallback (the measuring is :mod:`relmon.jobs.method_choice`). Below the scoring pass, so
that every runner can resolve ``auto`` before it builds a scorer."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from relmon.config import AUTO_METHODS, MonitorConfig

log = logging.getLogger("relmon.jobs")

#: ``methods: auto`` on an embedded model (chosen for them at the paper's protocol on 256 test images, no separate validation split; the demo's numbers).
EMBEDDED_METHOD = "lrp:epsilon_0_01"
#: ``methods: auto`` on another model without a calibration: the composite that won on the third-party
#: network of issue 21, or gradient × input where relmon's LRP refuses the model.
FALLBACK_METHOD = "lrp:epsilon_plus_flat"
GRADIENT_FALLBACK = "gradient_x_input"


def is_auto(methods) -> bool:
    """True for ``methods: auto`` (the config keeps it as the one-element tuple :data:`AUTO_METHODS`)."""
    return tuple(methods) == AUTO_METHODS


def is_embedded_model(model) -> bool:
    """True when ``model`` is one of relmon's shipped models (by its identity, not by the config)."""
    from relmon.identity import model_info
    from relmon.models.loading import list_embedded

    return model_info(model).name in list_embedded()


def fallback_method(model, example: torch.Tensor | None) -> str:
    """``methods: auto`` without a calibration: :data:`EMBEDDED_METHOD` for an embedded model, else
    :data:`FALLBACK_METHOD` where relmon's LRP supports ``model`` (checked on ``example``, a batch in the
    model's input space), else :data:`GRADIENT_FALLBACK`."""
    if is_embedded_model(model):
        return EMBEDDED_METHOD
    if example is None:
        return FALLBACK_METHOD
    from relmon.explain.lrp import UnsupportedModelError, check_lrp_support

    try:
        check_lrp_support(model, example[:1], FALLBACK_METHOD)
    except UnsupportedModelError as err:
        log.warning("methods: auto: relmon's LRP does not support this model (%s); using %s",
                    str(err).split(". zennit", 1)[0], GRADIENT_FALLBACK)
        return GRADIENT_FALLBACK
    return FALLBACK_METHOD


def resolve_auto(cfg: MonitorConfig, model, calibration=None, example: torch.Tensor | None = None) -> MonitorConfig:
    """``cfg`` with ``methods: auto`` replaced by the method to score with: the calibration's choice (the
    methods it scored with), else :func:`fallback_method` (logged: ``relmon calibrate`` would choose per
    model). Any other ``methods`` is returned as is."""
    if not is_auto(cfg.methods):
        return cfg
    if calibration is not None:
        return replace(cfg, methods=tuple(calibration.meta["methods"]))
    method = fallback_method(model, example)
    if method != EMBEDDED_METHOD:
        log.info("methods: auto without a calibration: scoring with %s (the fallback); 'relmon calibrate' "
                 "measures every candidate method on this model and chooses the best", method)
    return replace(cfg, methods=(method,))


__all__ = ["EMBEDDED_METHOD", "FALLBACK_METHOD", "GRADIENT_FALLBACK", "fallback_method", "is_auto",
           "is_embedded_model", "resolve_auto"]
