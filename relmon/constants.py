"""Constants shared by the torch side (``relmon.metrics``) and the torch-free exporter
(``relmon.export.metrics``); this module imports nothing, so the exporter loads without torch,
torchmetrics or scipy."""

from __future__ import annotations

# Upper bounds ("le") of the per-sample relative AOPC histogram; +Inf is implicit. Shared by the
# torchmetrics histogram state (relmon.metrics.AOPCHistogram) and the Prometheus histogram
# relmon_sample_aopc_relative, so both count the same buckets.
AOPC_RELATIVE_BUCKETS: tuple[float, ...] = (
    -0.5, -0.25, -0.1, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0,
)

__all__ = ["AOPC_RELATIVE_BUCKETS"]
