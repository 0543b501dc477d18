"""Which module of a LightningModule is the classifier relmon explains.

One rule, shared by :class:`~relmon.lightning.HeatmapQualityCallback` (at ``setup()``) and by
:func:`~relmon.models.load_lightning_checkpoint` (the jobs' ``lightning_module`` + ``checkpoint``):

1. ``model_attr`` when given: the attribute of that name (an ``nn.Module`` that is not a metric);
2. else the first ``nn.Module`` among the attributes :data:`CLASSIFIER_ATTRIBUTES`;
3. else the LightningModule's own ``forward`` over its children **without** its torchmetrics metrics
   and loss modules (they are not layers: LRP's support check, composites and mode switches must not
   see them) — :class:`ForwardClassifier`.

Lightning itself is not imported here: the rule works on any ``nn.Module``.
"""

from __future__ import annotations

from torch import nn
from torchmetrics import Metric, MetricCollection

#: Attributes searched, in this order, for the classifier when ``model_attr`` is not given.
CLASSIFIER_ATTRIBUTES = ("model", "net", "classifier")
#: Children of a LightningModule that are not layers of the classifier.
NOT_LAYERS = (Metric, MetricCollection, nn.modules.loss._Loss)


class ForwardClassifier(nn.Module):
    """``owner.forward`` as a classifier whose modules are the owner's layers only.

    Its children are the owner's children except torchmetrics metrics and loss modules, so LRP
    composites, the support check and mode switches see layers only; ``forward`` calls the owner's
    ``forward`` method directly (not through ``__call__``), which ``torch.fx`` can trace.
    """

    def __init__(self, owner: nn.Module):
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: its metrics stay out
        for name, child in owner.named_children():
            if not isinstance(child, NOT_LAYERS):
                self.add_module(name, child)

    @property
    def owner(self) -> nn.Module:
        """The wrapped module (e.g. the LightningModule, with its hyper-parameters)."""
        return self._owner

    def forward(self, x):
        return self._owner.forward(x)


def module_attributes(owner: nn.Module) -> list[str]:
    """Names of ``owner``'s children that are layers (metrics and loss modules left out)."""
    return [name for name, child in owner.named_children() if not isinstance(child, NOT_LAYERS)]


def _has_own_forward(owner: nn.Module) -> bool:
    """True when a class of the user's (not torch's or Lightning's) defines ``forward``."""
    for klass in type(owner).__mro__:
        if "forward" in vars(klass):
            base = klass.__module__.split(".")[0]
            return base not in ("torch", "pytorch_lightning", "lightning")
    return False


def find_classifier(
    owner: nn.Module,
    model_attr: str | None = None,
    setting: str = "model_attr={attr}",
    fix: str = "set model_attr to the name of the attribute that holds it",
) -> nn.Module:
    """The classifier inside ``owner`` (a LightningModule or any ``nn.Module``) by the rule above.

    ``setting`` (a template with ``{attr}``) names where ``model_attr`` comes from and ``fix`` how to set it, for the messages
    (the callback's argument or the config field). Raises ``AttributeError`` naming the module's layer
    attributes when ``model_attr`` names no layer module or nothing is found.
    """
    cls = type(owner).__name__
    if model_attr is not None:
        model = getattr(owner, model_attr, None)
        if not isinstance(model, nn.Module) or isinstance(model, NOT_LAYERS):
            raise AttributeError(
                f"{setting.format(attr=repr(model_attr))}: {cls} has no classifier module in attribute {model_attr!r}; "
                f"its module attributes are {module_attributes(owner)}; fix: {fix}"
            )
        return model
    for name in CLASSIFIER_ATTRIBUTES:
        model = getattr(owner, name, None)
        if isinstance(model, nn.Module) and not isinstance(model, NOT_LAYERS):
            return model
    if not _has_own_forward(owner):
        raise AttributeError(
            f"cannot find the classifier of {cls}: it has no attribute {' / '.join(CLASSIFIER_ATTRIBUTES)} "
            f"and no forward(); fix: {fix} (module attributes: {module_attributes(owner)})"
        )
    return ForwardClassifier(owner)


__all__ = ["CLASSIFIER_ATTRIBUTES", "NOT_LAYERS", "ForwardClassifier", "find_classifier", "module_attributes"]
