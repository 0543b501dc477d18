"""Lightning integration: RelevanceMonitor (predict over streams), RecordWriter, HeatmapQualityCallback.

Importing this package imports ``pytorch_lightning`` (seconds); ``import relmon`` does not.
"""

from relmon.extras import optional_imports

with optional_imports("relmon.lightning (HeatmapQualityCallback, RelevanceMonitor, runner: lightning)"):
    from relmon.lightning.callback import HeatmapQualityCallback
    from relmon.lightning.monitor import MeanCI, RelevanceMonitor, padding_flags, selection_hash
    from relmon.lightning.writer import RecordWriter, read_records

__all__ = [
    "HeatmapQualityCallback",
    "MeanCI",
    "RecordWriter",
    "RelevanceMonitor",
    "padding_flags",
    "read_records",
    "selection_hash",
]
