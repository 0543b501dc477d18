"""Figures: heatmap grids (and later perturbation curves and metric time series)."""

from relmon.report.grid import heatmap_grid

__all__ = ["heatmap_grid"]
