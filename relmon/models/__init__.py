"""Models: the embedded Fashion-MNIST defaults, user models, and their declared input space."""

from relmon.models.architectures import SmallCNN, SmallVGG
from relmon.models.loading import (
    DEFAULT_MODEL,
    FASHION_MNIST_PREPROCESSING,
    Checkpoint,
    ModelInfo,
    build_model,
    checkpoint_series,
    list_embedded,
    load_embedded,
    load_lightning_checkpoint,
    load_model,
    manifest,
    model_info,
    set_model_info,
    weights_hash,
)
from relmon.models.preprocessing import (
    MissingPreprocessingError,
    Preprocessing,
    attach_preprocessing,
    get_preprocessing,
    input_bounds,
)

__all__ = [
    "DEFAULT_MODEL",
    "FASHION_MNIST_PREPROCESSING",
    "Checkpoint",
    "MissingPreprocessingError",
    "ModelInfo",
    "Preprocessing",
    "SmallCNN",
    "SmallVGG",
    "attach_preprocessing",
    "build_model",
    "checkpoint_series",
    "get_preprocessing",
    "input_bounds",
    "list_embedded",
    "load_embedded",
    "load_lightning_checkpoint",
    "load_model",
    "manifest",
    "model_info",
    "set_model_info",
    "weights_hash",
]
