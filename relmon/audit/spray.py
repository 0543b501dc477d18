"""SpRAy — spectral relevance analysis (Lapuschkin et al., Nat. Commun. 2019), on scikit-learn.

Per class: downsize the heatmaps (average pooling), keep their positive part and scale each to unit
ℓ2 norm, build a symmetric k-nearest-neighbour graph, read the eigenvalues of its normalised graph
Laplacian, choose the number of clusters by the largest gap among the smallest ones (the
*eigengap*), and cluster with :class:`sklearn.cluster.SpectralClustering` on the same graph.

CoRelAy (PyPI ``corelay``) packages the same pipeline, but it pulls ``metrohash-python`` (a C++
build at install time), ``h5py`` and ``scikit-image``; scikit-learn, already a relmon dependency,
has every step (``kneighbors_graph``, the Laplacian, ``SpectralClustering``), so relmon uses it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SprayResult:
    """``labels`` ``(n,)`` cluster per sample (ordered by size, 0 the largest), ``eigenvalues`` the
    smallest eigenvalues of the normalised Laplacian, ``n_clusters`` the eigengap's choice."""

    labels: np.ndarray
    eigenvalues: np.ndarray
    n_clusters: int


def spray_features(heatmaps: torch.Tensor, size: int | None = None) -> np.ndarray:
    """Heatmaps ``(n, H, W)`` → ``(n, s·s)``: average-pooled to ``size`` (default half the side, at
    most 32), positive part, unit ℓ2 norm (an all-zero map stays zero)."""
    h = heatmaps.detach().float()
    if h.ndim != 3:
        raise ValueError(f"heatmaps must be (n, H, W), got shape {tuple(h.shape)}")
    if size is None:
        size = min(32, max(1, min(h.shape[-2:]) // 2))
    small = torch.nn.functional.adaptive_avg_pool2d(h[:, None], size)[:, 0].clamp(min=0).flatten(1)
    norm = small.norm(dim=1, keepdim=True)
    small = torch.where(norm > 0, small / norm.clamp(min=1e-12), small)
    return small.numpy().astype(np.float64)


def eigengap(eigenvalues: np.ndarray, max_clusters: int) -> int:
    """The cluster count ``k`` in ``1..max_clusters`` with the largest gap ``λ_k − λ_{k−1}``
    (eigenvalues ascending, ``λ_0`` the smallest)."""
    ev = np.sort(np.asarray(eigenvalues, dtype=float))[: max_clusters + 1]
    if len(ev) < 2:
        return 1
    gaps = np.diff(ev)  # gaps[k-1] = λ_k − λ_{k−1}
    return int(np.argmax(gaps)) + 1


def spray(features: np.ndarray, max_clusters: int = 8, n_neighbors: int | None = None, seed: int = 0) -> SprayResult:
    """Spectral clustering of one class's heatmap features ``(n, d)`` (:func:`spray_features`)."""
    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import SpectralClustering
    from sklearn.neighbors import kneighbors_graph

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    if n < 3:
        return SprayResult(np.zeros(n, dtype=np.int64), np.zeros(0), 1)
    k = n_neighbors or int(min(n - 1, max(5, round(np.sqrt(n)))))
    k = min(k, n - 1)
    graph = kneighbors_graph(x, n_neighbors=k, mode="connectivity", include_self=False)
    affinity = 0.5 * (graph + graph.T)
    lap = laplacian(affinity.toarray(), normed=True)
    eigenvalues = np.linalg.eigvalsh(lap)[: max_clusters + 1]
    n_clusters = min(eigengap(eigenvalues, max_clusters), n - 1)
    if n_clusters <= 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        with warnings.catch_warnings():  # "graph is not fully connected": the eigengap saw it too
            warnings.simplefilter("ignore", UserWarning)
            labels = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                                        assign_labels="kmeans").fit_predict(affinity)
    # relabel by size, largest first, so cluster 0 is the class's main strategy
    sizes = np.bincount(labels, minlength=labels.max() + 1)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    labels = remap[labels]
    return SprayResult(labels.astype(np.int64), eigenvalues, int(labels.max()) + 1)


__all__ = ["SprayResult", "eigengap", "spray", "spray_features"]
