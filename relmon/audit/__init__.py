"""Clever-Hans audit: per-class relevance maps, region shares against pixel shares, and SpRAy.

:func:`run_audit` is the core (tensors in, :class:`AuditResult` out); :func:`relmon.audit` and
``relmon audit`` are thin layers over it; :func:`write_audit_html` renders the page.
"""

from relmon.audit.core import DEFAULT_METHOD, AuditError, AuditResult, heatmaps_for, run_audit
from relmon.audit.regions import (
    MIN_EXCESS,
    MIN_LIFT,
    candidate_regions,
    rects_mask,
    relevance_shares,
    suspect,
)
from relmon.audit.spray import eigengap, spray, spray_features

__all__ = [
    "DEFAULT_METHOD",
    "MIN_EXCESS",
    "MIN_LIFT",
    "AuditError",
    "AuditResult",
    "candidate_regions",
    "eigengap",
    "heatmaps_for",
    "rects_mask",
    "relevance_shares",
    "run_audit",
    "spray",
    "spray_features",
    "suspect",
]


def write_audit_html(path, result, title: str = "relmon audit"):
    from relmon.audit.html import write_audit_html as _write

    return _write(path, result, title)
