"""Scan-level scores from stitched anomaly maps."""

from __future__ import annotations

import torch

__all__ = ["SCORE_METHODS", "scan_score", "topk_mean"]

SCORE_METHODS = ("topk", "discriminator", "combined")


def topk_mean(values: torch.Tensor, mask: torch.Tensor | None = None, fraction: float = 0.001, min_k: int = 10) -> float:
    """Mean of the top ``fraction`` of ``values`` inside ``mask`` (at least ``min_k`` voxels)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    v = values.reshape(-1).float()
    if mask is not None:
        sel = v[mask.reshape(-1) > 0.5]
        v = sel if sel.numel() else v
    k = int(min(v.numel(), max(min_k, round(fraction * v.numel()))))
    return float(torch.topk(v, k).values.mean())


def scan_score(
    anomaly_map: torch.Tensor,
    score_map: torch.Tensor | None = None,
    body: torch.Tensor | None = None,
    method: str = "topk",
    topk_fraction: float = 0.001,
    norm: dict | None = None,
) -> float:
    """One anomaly score per scan.

    Args:
        anomaly_map: stitched voxel map ``(1, *S)`` or ``(*S)``.
        score_map: stitched per-window scores (e.g. SimSID's discriminator score), same shape.
        body: body mask; scores are taken inside it.
        method: ``"topk"`` (mean of the top voxels of the map), ``"discriminator"`` (mean of the window scores over
            the body; SimSID's discriminator score, or the window score of the other models) or ``"combined"``
            (the sum of both after z-scoring each with ``norm``; a plain sum without it).
        topk_fraction: fraction of body voxels averaged by ``"topk"``.
        norm: ``{"topk_mean", "topk_std", "disc_mean", "disc_std"}`` from normal scans (the calibration's
            ``score_norm``), used by ``"combined"``.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got '{method}'.")
    if method in ("discriminator", "combined") and score_map is None:
        raise ValueError(f"method '{method}' needs a score_map.")
    topk = topk_mean(anomaly_map, body, topk_fraction) if method in ("topk", "combined") else 0.0
    if method == "topk":
        return topk
    sm = score_map.reshape(-1).float()  # type: ignore[union-attr]
    if body is not None and (body > 0.5).any():
        sm = sm[body.reshape(-1) > 0.5]
    disc = float(sm.mean())
    if method == "discriminator":
        return disc
    if norm is None:
        return topk + disc
    return (topk - norm["topk_mean"]) / norm["topk_std"] + (disc - norm["disc_mean"]) / norm["disc_std"]
