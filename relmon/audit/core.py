"""The Clever-Hans audit: where does a model's relevance sit, per class and per strategy?

:func:`run_audit` explains every image for the class the model predicts (with the configured heatmap
method), groups the heatmaps by that class, and reports

- per class: the mean heatmap, each candidate region's share of positive relevance against its
  pixel share, and the regions the suspect rule flags (:mod:`relmon.audit.regions`);
- per class: SpRAy clusters of the heatmaps (:mod:`relmon.audit.spray`) with their sizes,
  prototypes (mean heatmaps) and the regions the same rule flags in each cluster's mean shares;
  a cluster is flagged when it holds at least ``min_cluster_share`` of its class and at least
  ``min_class_n`` images, and has a suspect region (smaller clusters are too noisy to judge).

The model is **flagged** when a class has a suspect region (in its mean shares over all the images
predicted as that class); the suspect regions (rectangles ``[top, left, height, width]``, in pixels
of the input) are what ``suspect_regions`` in the monitoring config takes. Flagged clusters are
reported for inspection (``clusters``, and their regions in ``cluster_suspect_regions``) but do not
flag the model: on the planted ``marker`` and ``border`` shortcuts every shortcut model was found by
its class means, and cluster-level suspects added no shortcut found and made the only false flags
(a control flagged for one top-edge cell in one cluster; ``docs/shortcuts.md``). A shortcut used by a
minority of a class's images shows up there, not in the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relmon.audit.regions import (
    MIN_EXCESS,
    MIN_LIFT,
    Region,
    candidate_regions,
    pixel_shares,
    region_masks,
    relevance_shares,
    suspect,
)
from relmon.audit.spray import spray, spray_features

DEFAULT_METHOD = "lrp:epsilon_0_01"


class AuditError(ValueError):
    """The audit cannot run on what it was given; the message names the problem and the fix."""


@dataclass
class AuditResult:
    """What :func:`run_audit` found. :meth:`to_dict` is the ``--json`` output."""

    flagged: bool
    suspect_regions: list[list[int]]
    per_class: dict[str, dict[str, Any]]
    clusters: dict[str, list[dict[str, Any]]]
    settings: dict[str, Any]
    regions: list[Region] = field(repr=False, default_factory=list)
    pixel_share: np.ndarray = field(repr=False, default=None)
    mean_maps: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    prototypes: dict[str, list[np.ndarray]] = field(repr=False, default_factory=dict)
    mean_image: np.ndarray = field(repr=False, default=None)
    cluster_suspect_regions: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "suspect_regions": self.suspect_regions,
            "per_class": self.per_class,
            "clusters": self.clusters,
            "cluster_suspect_regions": self.cluster_suspect_regions,
            "settings": self.settings,
        }

    def table(self) -> str:
        lines = [f"audit: {'FLAGGED' if self.flagged else 'nothing flagged'} "
                 f"({self.settings['n_images']} images, method {self.settings['method']})"]
        lines.append(f"{'class':<16} {'n':>5} {'top region':<12} {'share':>6} {'pixels':>6} {'clusters':>8}  suspect")
        for name, info in self.per_class.items():
            top = info.get("top_region") or {}
            lines.append(
                f"{name[:16]:<16} {info['n']:>5} {str(top.get('name', '-')):<12} {top.get('share', float('nan')):6.3f} "
                f"{top.get('pixel_share', float('nan')):6.3f} {len(self.clusters.get(name, [])):>8}  "
                + (", ".join(s["name"] for s in info["suspect"]) or "-")
            )
        if self.suspect_regions:
            lines.append("suspect_regions (copy into the config): " + str(self.suspect_regions))
        extra = [r for r in self.cluster_suspect_regions if r not in self.suspect_regions]
        if extra:
            lines.append("suspect in a cluster only (inspect; not flagged): " + str(extra))
        return "\n".join(lines)


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise AuditError(f"images must be shaped (N, C, H, W) or (N, H, W), got {tuple(images.shape)}")
    if len(images) == 0:
        raise AuditError("no images to audit; fix: give a folder, manifest or tensor holding at least one image")
    if images.dtype == torch.uint8:
        images = images.float().div(255.0)
    elif not images.is_floating_point():
        raise AuditError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
    images = images.float()
    lo, hi = float(images.min()), float(images.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise AuditError(
            f"images must lie in [0, 1] before normalisation, got values in [{lo:.3g}, {hi:.3g}]; fix: pass raw "
            "images scaled to [0, 1] (relmon normalises them with the model's preprocessing)"
        )
    return images


def heatmaps_for(model, images: torch.Tensor, method: str = DEFAULT_METHOD, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmaps ``(N, H, W)`` of the predicted class, the predictions ``(N,)`` and the max softmax
    ``(N,)`` for raw ``images`` ``(N, C, H, W)`` in [0, 1] (normalised with the model's preprocessing)."""
    from relmon.explain import explain_full, to_heatmap
    from relmon.preprocessing import get_preprocessing

    prep = get_preprocessing(model, "the audit")
    maps, preds, confs = [], [], []
    for start in range(0, len(images), batch_size):
        x = prep.normalize(images[start:start + batch_size].to(device))
        ex = explain_full(model, x, method)
        maps.append(to_heatmap(ex.relevance, ex.method).float().cpu())
        preds.append(ex.target.cpu())
        confs.append(ex.logits.float().softmax(1).amax(1).cpu())
    return torch.cat(maps), torch.cat(preds), torch.cat(confs)


def _class_names(classes, num_classes: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(num_classes)]
    names = [str(c) for c in classes]
    if len(names) < num_classes:
        raise AuditError(
            f"{len(names)} class names for a model with {num_classes} outputs; fix: list one name per output"
        )
    return names


def _suspects(shares: np.ndarray, pix: np.ndarray, regions: list[Region], min_excess: float,
              min_lift: float) -> list[dict[str, Any]]:
    hits = np.flatnonzero(suspect(shares, pix, min_excess, min_lift))
    hits = hits[np.argsort(-(shares[hits] - pix[hits]), kind="stable")]
    return [{"name": regions[k].name, "rects": [list(r) for r in regions[k].rects],
             "share": float(shares[k]), "pixel_share": float(pix[k])} for k in hits]


def run_audit(
    model,
    images,
    labels=None,
    *,
    classes=None,
    method: str = DEFAULT_METHOD,
    region: int = 4,
    border: int | None = None,
    corner: int | None = None,
    min_excess: float = MIN_EXCESS,
    min_lift: float = MIN_LIFT,
    min_class_n: int = 10,
    max_clusters: int = 8,
    max_per_class: int = 500,
    min_cluster_share: float = 0.1,
    spray_size: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> AuditResult:
    """Audit ``model`` on raw ``images`` ``(N, C, H, W)`` in [0, 1] (see the module doc).

    ``labels`` (optional, ``N`` class indices) only add per-class accuracy: the audit explains and
    groups by the *predicted* class, so it runs on unlabelled data too. Classes predicted fewer than
    ``min_class_n`` times are listed but not judged. SpRAy clusters at most ``max_per_class`` images
    per class (a seeded subsample).
    """
    x = _check_images(images)
    n, _, height, width = x.shape
    y = None
    if labels is not None:
        y = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1).astype(np.int64)
        if len(y) != n:
            raise AuditError(f"{len(y)} labels for {n} images; fix: give one label per image (or none)")
    if not 0.0 < min_excess < 1.0 or min_lift <= 0:
        raise AuditError(f"min_excess must lie in (0, 1) and min_lift be positive, got {min_excess}, {min_lift}")
    model.eval()
    regions = candidate_regions(height, width, region, border, corner)
    masks = region_masks(regions, height, width)
    pix = pixel_shares(masks).numpy().astype(float)

    heat, pred, conf = heatmaps_for(model, x, method, batch_size, device)
    shares_t, ok = relevance_shares(heat, masks)
    shares = shares_t.numpy().astype(float)
    pred_np = pred.numpy()
    ok_np = ok.numpy()
    with torch.no_grad():
        num_classes = int(model(get_prep(model).normalize(x[:1].to(device))).shape[1])
    names = _class_names(classes, num_classes)
    pos = heat.clamp(min=0)
    unit = pos / pos.flatten(1).sum(1).clamp(min=1e-12)[:, None, None]

    rng = np.random.default_rng(seed)
    per_class: dict[str, dict[str, Any]] = {}
    clusters: dict[str, list[dict[str, Any]]] = {}
    mean_maps: dict[str, np.ndarray] = {}
    prototypes: dict[str, list[np.ndarray]] = {}
    suspect_rects: list[list[int]] = []
    cluster_rects: list[list[int]] = []

    def add_rects(found, into):
        for s in found:
            for r in s["rects"]:
                if r not in into:
                    into.append(r)

    for c in range(num_classes):
        idx = np.flatnonzero((pred_np == c) & ok_np)
        if len(idx) == 0 and not (pred_np == c).any():
            continue
        name = names[c]
        info: dict[str, Any] = {
            "class_index": c,
            "n": int((pred_np == c).sum()),
            "n_no_positive_relevance": int(((pred_np == c) & ~ok_np).sum()),
            "mean_confidence": float(conf[torch.from_numpy(pred_np == c)].mean()),
            "judged": bool(len(idx) >= min_class_n),
        }
        if y is not None:
            info["accuracy"] = float((y[pred_np == c] == c).mean())  # precision of the predicted class
        if len(idx) == 0:
            info.update(region_shares={}, top_region=None, suspect=[])
            per_class[name] = info
            continue
        cls_share = np.nanmean(shares[idx], axis=0)
        excess = cls_share - pix
        top = int(np.argmax(excess))
        info["top_region"] = {"name": regions[top].name, "rects": [list(r) for r in regions[top].rects],
                              "share": float(cls_share[top]), "pixel_share": float(pix[top])}
        info["region_shares"] = {regions[k].name: round(float(cls_share[k]), 6) for k in range(len(regions))}
        found = _suspects(cls_share, pix, regions, min_excess, min_lift) if info["judged"] else []
        info["suspect"] = found
        add_rects(found, suspect_rects)
        per_class[name] = info
        mean_maps[name] = unit[torch.from_numpy(idx)].mean(0).numpy()

        if not info["judged"]:
            continue
        sub = idx if len(idx) <= max_per_class else np.sort(rng.choice(idx, max_per_class, replace=False))
        result = spray(spray_features(heat[torch.from_numpy(sub)], spray_size), max_clusters, seed=seed)
        cl_list, protos = [], []
        for k in range(result.n_clusters):
            members = sub[result.labels == k]
            cshare = np.nanmean(shares[members], axis=0)
            frac = len(members) / len(sub)
            judged = frac >= min_cluster_share and len(members) >= min_class_n
            cfound = _suspects(cshare, pix, regions, min_excess, min_lift) if judged else []
            cl_list.append({"cluster": k, "size": int(len(members)), "share_of_class": float(frac),
                            "flagged": bool(cfound), "suspect": cfound,
                            "top_region": regions[int(np.argmax(cshare - pix))].name})
            add_rects(cfound, cluster_rects)
            protos.append(unit[torch.from_numpy(members)].mean(0).numpy())
        clusters[name] = cl_list
        info["n_clusters"] = result.n_clusters
        info["eigenvalues"] = [round(float(v), 6) for v in result.eigenvalues]
        prototypes[name] = protos

    flagged = bool(suspect_rects)
    settings = {
        "method": method, "n_images": int(n), "image_size": [int(height), int(width)], "region": int(region),
        "border": int(max(1, region // 2) if border is None else border),
        "corner": int(min(2 * region, min(height, width) // 2) if corner is None else corner),
        "min_excess": float(min_excess),
        "min_lift": float(min_lift), "min_class_n": int(min_class_n), "max_clusters": int(max_clusters),
        "max_per_class": int(max_per_class), "min_cluster_share": float(min_cluster_share),
        "grouped_by": "predicted class", "labelled": y is not None, "seed": int(seed),
        "n_no_positive_relevance": int((~ok_np).sum()),
    }
    if y is not None:
        settings["accuracy"] = float((pred_np == y).mean())
    return AuditResult(flagged, suspect_rects, per_class, clusters, settings, regions, pix, mean_maps,
                       prototypes, x.mean(0).mean(0).numpy(), cluster_rects)


def get_prep(model):
    from relmon.preprocessing import get_preprocessing

    return get_preprocessing(model, "the audit")


__all__ = ["DEFAULT_METHOD", "AuditError", "AuditResult", "heatmaps_for", "run_audit"]
