"""Heatmap methods behind one function: ``explain(model, x, method=..., target=None)``."""

from relmon.explain.core import (
    Explanation,
    available_methods,
    canonical_method,
    conservation,
    explain,
    explain_full,
    parse_method,
)
from relmon.explain.heatmap import to_heatmap
from relmon.explain.lrp import (
    COMPOSITES,
    DEFAULT_COMPOSITE,
    UnsupportedModelError,
    check_lrp_support,
    default_canonizers,
    first_layer,
)

__all__ = [
    "COMPOSITES",
    "DEFAULT_COMPOSITE",
    "Explanation",
    "UnsupportedModelError",
    "available_methods",
    "canonical_method",
    "check_lrp_support",
    "conservation",
    "default_canonizers",
    "explain",
    "explain_full",
    "first_layer",
    "parse_method",
    "to_heatmap",
]

