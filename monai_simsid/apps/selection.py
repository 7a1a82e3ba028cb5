"""Label-free model selection: rank trained checkpoints by how well they find synthetic lesions in normal scans.

Training the same configuration with another seed can change a model's real-CT figures more than any ingredient does
(see ``docs/benchmarks.md``). Lesion labels of real cases must not pick the model, so this module scores each
checkpoint on the only labelled data a user without lesion labels has: copies of normal scans with synthetic
ellipsoid lesions injected (:func:`~monai_simsid.data.datasets.build_validation_data`, the bundle's own validation
data), one lesion per normal and injection seed. The normals are the datalist's validation normals, else its training
normals (the rule of the calibration).

Each checkpoint runs through its bundle's own ``inference.json`` network, preprocessing and sliding-window inferer,
on the model grid, without calibration or normative maps (they rescale the map per position, which is a property of
the calibration, not of the trained network).

It is not a reliable choice: on the shared real CT (three training normals, nine injected lesions) it ranked six
existing checkpoints as the real lesions did, but then picked the worst of three new seeds on the LIDC crops, and
the worst of six seeds of the one-convolution encoder on lung2 (``docs/benchmarks.md``, "Label-free model
selection" and "One convolution per encoder level").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monai_simsid.data.datalist import load_datalist
from monai_simsid.data.datasets import build_validation_data, preprocess_all
from monai_simsid.data.exclusion import item_exclusion
from monai_simsid.inferers.scoring import scan_score
from monai_simsid.metrics.sample import compute_sample_auroc
from monai_simsid.metrics.voxel import compute_voxel_ap, compute_voxel_auroc

__all__ = ["SELECTION_METRICS", "rank_checkpoints", "synthetic_lesion_scores"]

logger = logging.getLogger(__name__)

#: the figures :func:`synthetic_lesion_scores` returns; all are "higher is better"
SELECTION_METRICS = ("voxel_ap", "voxel_auroc", "sample_auroc")


def synthetic_lesion_scores(
    network: torch.nn.Module,
    inferer: Any,
    normals: Sequence[dict],
    seeds: Sequence[int] = (0, 1, 2),
    score_method: str = "topk",
    topk_fraction: float = 0.001,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Score one network on synthetic lesions injected into preprocessed normal scans.

    Args:
        network: an anomaly model (eval-mode named result with ``anomaly_map``).
        inferer: the sliding-window inferer, called as ``inferer(x, network, body)``.
        normals: preprocessed normal scans (``image``, ``body``), as :func:`preprocess_all` returns them.
        seeds: injection seeds; each gives every normal one lesion (the same lesions for every network).
        score_method, topk_fraction: the scan score (see :func:`~monai_simsid.inferers.scoring.scan_score`).
        device: where the windows run.

    A normal's exclusion mask (see :mod:`monai_simsid.data.exclusion`), grown by its margin, is left out of its
    scores and voxels, and of its injected copies'.

    Returns:
        ``voxel_ap`` and ``voxel_auroc``: inside the body, averaged over the injected cases; ``sample_auroc``: the
        scan scores of the normals against those of the injected cases. ``num_lesion_cases``.

    Raises:
        ValueError: no normals or no seeds.
    """
    if len(normals) == 0:
        raise ValueError("synthetic_lesion_scores needs at least one normal scan.")
    if len(seeds) == 0:
        raise ValueError("synthetic_lesion_scores needs at least one injection seed.")
    network.eval()
    scores, labels, ap, auroc = [], [], [], []

    def run(item: dict) -> tuple[np.ndarray, float, np.ndarray]:
        x = torch.as_tensor(item["image"])[None].float().to(device)
        body = torch.as_tensor(item["body"])[None].to(device)
        with torch.no_grad():
            res = inferer(x, network, body)
        excluded = item_exclusion(item)  # a region of the normal to leave out: not scored
        kept = body[0] if excluded is None else body[0] * torch.from_numpy(~excluded)[None].to(body.device)
        score = scan_score(res.anomaly_map[0], res.score_map[0], kept, score_method, topk_fraction)
        return res.anomaly_map[0, 0].detach().cpu().numpy(), float(score), kept[0].cpu().numpy() > 0.5

    for normal in normals:
        scores.append(run(normal)[1])
        labels.append(0)
    for s in seeds:
        for item in build_validation_data(list(normals), seed=int(s))[len(normals):]:  # the injected copies
            amap, score, body = run(item)
            scores.append(score)
            labels.append(1)
            lesion = np.asarray(item["label"]).reshape(amap.shape) > 0
            ap.append(compute_voxel_ap(amap, lesion, body).value)
            auroc.append(compute_voxel_auroc(amap, lesion, body).value)
    ap = [v for v in ap if v is not None]
    auroc = [v for v in auroc if v is not None]
    return {
        "voxel_ap": float(np.mean(ap)) if ap else float("nan"),
        "voxel_auroc": float(np.mean(auroc)) if auroc else float("nan"),
        "sample_auroc": float(compute_sample_auroc(scores, labels).value),
        "num_lesion_cases": len(labels) - len(normals),
    }


def _selection_normals(datalist: str | os.PathLike) -> list[dict]:
    """The datalist entries of the normals to inject into: validation normals, else the training scans."""
    val = [e for e in load_datalist(datalist, "validation", missing_ok=True) if not e.get("label")]
    if val:
        return val
    logger.warning("no normal validation scan in %s: injecting into the training normals (optimistic)", datalist)
    return load_datalist(datalist, "training")


def rank_checkpoints(
    bundle_name: str,
    ckpt_paths: Sequence[str | os.PathLike],
    datalist: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    metric: str = "voxel_ap",
    device: str = "cpu",
) -> dict[str, Any]:
    """Score every checkpoint with :func:`synthetic_lesion_scores` and rank them by ``metric`` (best first).

    Args:
        bundle_name: the bundle whose ``inference.json`` builds the network, preprocessing and inferer
            (a network bundle: ``simsid_ct``, ``autoencoder_ct``, ``cutpaste_ct``, ``ganomaly_ct``).
        ckpt_paths: trained checkpoints of that bundle (``models/model.pt`` of each training run).
        datalist: the training datalist; its validation normals (else its training scans) receive the lesions.
        seeds: injection seeds (see :func:`synthetic_lesion_scores`).
        metric: one of :data:`SELECTION_METRICS`.
        device: where the windows run.

    Returns:
        ``{"metric", "normals", "seeds", "ranking": [{"checkpoint", <figures>}, ...], "best"}``.

    Raises:
        ValueError: an unknown metric or no checkpoint.
        InputError: a checkpoint or scan that cannot be read (one clear line naming the file).
    """
    from monai_simsid.apps.inference import load_predictor

    if metric not in SELECTION_METRICS:
        raise ValueError(f"metric must be one of {SELECTION_METRICS}, got '{metric}'.")
    if len(ckpt_paths) == 0:
        raise ValueError("rank_checkpoints needs at least one checkpoint.")
    entries = _selection_normals(datalist)
    predictors = [load_predictor(bundle_name, str(p), device) for p in ckpt_paths]  # every checkpoint read first
    cache: dict[str, list[dict]] = {}
    rows = []
    for path, predictor in zip(ckpt_paths, predictors):
        if getattr(predictor, "network", None) is None or getattr(predictor, "inferer", None) is None:
            raise ValueError(f"bundle '{bundle_name}' has no trained network to rank (got {type(predictor).__name__}).")
        key = repr(sorted(predictor.preprocessing_settings.items()))  # checkpoints may differ in preprocessing
        if key not in cache:
            cache[key] = preprocess_all(entries, predictor.preprocessing)
        figures = synthetic_lesion_scores(
            predictor.network, predictor.inferer, cache[key], seeds, predictor.score_method,
            float(predictor.calibration.get("topk_fraction", 0.001)), device,
        )
        rows.append({"checkpoint": str(path), **figures})
        logger.info("%s: %s", path, figures)
    rows.sort(key=lambda r: -np.nan_to_num(r[metric], nan=-np.inf))
    return {
        "metric": metric,
        "normals": [e["image"] for e in entries],
        "seeds": [int(s) for s in seeds],
        "ranking": rows,
        "best": rows[0]["checkpoint"],
    }
