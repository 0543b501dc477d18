"""relmon: label-free monitoring of image classifiers by the quality of their explanations."""

from relmon.explain import (
    UnsupportedModelError,
    available_methods,
    canonical_method,
    conservation,
    explain,
    explain_full,
    to_heatmap,
)
from relmon.models import Preprocessing, attach_preprocessing, load_embedded, load_model
from relmon.perturbation import evaluate_heatmaps, region_perturbation

__version__ = "0.1.0"

__all__ = [
    "Preprocessing",
    "UnsupportedModelError",
    "__version__",
    "attach_preprocessing",
    "available_methods",
    "canonical_method",
    "conservation",
    "explain",
    "evaluate_heatmaps",
    "explain_full",
    "load_embedded",
    "load_model",
    "region_perturbation",
    "to_heatmap",
]
