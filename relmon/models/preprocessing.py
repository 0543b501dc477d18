"""Re-export of :mod:`relmon.preprocessing` (the core module), kept so existing imports work."""

from relmon.preprocessing import (
    ATTRIBUTE,
    MissingPreprocessingError,
    Preprocessing,
    attach_preprocessing,
    eval_mode,
    get_preprocessing,
    input_bounds,
)

__all__ = ["ATTRIBUTE", "MissingPreprocessingError", "Preprocessing", "attach_preprocessing", "eval_mode",
           "get_preprocessing", "input_bounds"]
