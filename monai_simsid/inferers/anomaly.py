"""Full-scan sliding-window inference for anomaly models, with per-window body-region keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer, sliding_window_inference

from monai_simsid.transforms.body.array import body_bbox, region_index

__all__ = ["AnomalyInferer", "AnomalyInferenceResult"]


class AnomalyInferenceResult(NamedTuple):
    """Stitched outputs over a whole scan.

    Attributes:
        anomaly_map: ``(B, 1, *S)`` voxel anomaly map, Gaussian-blended over overlapping windows.
        score_map: ``(B, 1, *S)`` each window's scalar score spread over its window and blended the same way; None
            when the inferer was called with ``score_map=False``.
    """

    anomaly_map: torch.Tensor
    score_map: torch.Tensor | None


class AnomalyInferer(Inferer):
    """Slide a window over a whole preprocessed scan and stitch the model's anomaly maps.

    The predictor receives each window's coordinates (MONAI's ``with_coord``), so every window reads the memory of
    its body region: the window centre is located in the body bounding box divided into ``region_grid`` cells (see
    :func:`~monai_simsid.transforms.body.region_index`).

    The network is called as ``network(windows, region)`` in eval mode and must return an object with an
    ``anomaly_map`` ``(N, 1, *roi)`` and a ``score`` ``(N,)`` attribute (the named result of every model here).

    Args:
        roi_size: window size.
        region_grid: body-region grid of the model ((1, 1, 1) when the model has no region key).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.
        mode: blending mode ("gaussian" or "constant").
        sw_device: device for the windows (e.g. "cuda") while stitching happens on ``device``.
        device: device of the stitched output (e.g. "cpu" for big scans).
        progress: show a progress bar.
        amp: run the network under CUDA mixed precision (``torch.autocast``, float16) when the windows are on a CUDA
            device; ignored on CPU. The outputs are cast back to float32 before stitching, so blending and the map
            stay in full precision.
        margin: voxels added on each side of the scan (one int, or one per axis) before the windows are laid out,
            and cropped off the maps afterwards. Without it a voxel on the scan's border is seen only by the rims of
            the windows that touch the border, where convolutions read zero padding, and the Gaussian blending has
            no window centre to weigh against them: a tissue cut by the field of view then scores high. The margin
            is filled by mirroring the scan (``margin_mode``).
        margin_mode: ``"reflect"`` (default; falls back to ``"replicate"`` on an axis too short to mirror) or
            ``"replicate"``.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        region_grid: Sequence[int] = (1, 1, 1),
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        amp: bool = False,
        margin: int | Sequence[int] = 0,
        margin_mode: str = "reflect",
    ) -> None:
        super().__init__()
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        margins = [int(margin)] * len(roi_size) if isinstance(margin, (int, np.integer)) else [int(m) for m in margin]
        if len(margins) != len(roi_size) or any(m < 0 for m in margins):
            raise ValueError(f"margin must be one non-negative int or one per axis of roi_size, got {margin}.")
        if margin_mode not in ("reflect", "replicate"):
            raise ValueError(f"margin_mode must be 'reflect' or 'replicate', got {margin_mode!r}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        self.roi_size = tuple(int(r) for r in roi_size)
        self.region_grid = tuple(int(r) for r in region_grid)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.mode = mode
        self.sw_device = sw_device
        self.device = device
        self.progress = progress
        self.amp = bool(amp)
        self.margin = tuple(margins)
        self.margin_mode = margin_mode

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Any,
        body: torch.Tensor | None = None,
        *args: Any,
        score_map: bool = True,
        **kwargs: Any,
    ) -> AnomalyInferenceResult:
        """Run on ``inputs`` ``(B, C, *S)``; ``body`` ``(B, 1, *S)`` defines the region frame (whole scan if None).

        With ``score_map=False`` the window scores are not spread and stitched (the result's ``score_map`` is None);
        the anomaly map is the same.
        """
        if inputs.ndim != len(self.roi_size) + 2:
            raise ValueError(f"expected inputs (B, C, {len(self.roi_size)} spatial dims), got {tuple(inputs.shape)}.")
        if body is None:
            boxes = [(np.zeros(len(self.roi_size), int), np.asarray(inputs.shape[2:]))] * inputs.shape[0]
        else:
            boxes = [body_bbox(b[0] > 0.5) for b in body]
        spatial = tuple(inputs.shape[2:])
        inputs = self._add_margin(inputs)
        # the window can be larger than the scan: sliding_window_inference pads, so the coordinates refer to the
        # padded scan; shift the boxes by the same symmetric padding, and by the margin
        pad = [max(r - s, 0) // 2 + m for r, s, m in zip(self.roi_size, inputs.shape[2:], self.margin)]

        def predictor(windows: torch.Tensor, coords: list) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            regions = []
            for c in coords:
                b = c[0].start
                start = [s.start - p for s, p in zip(c[2:], pad)]
                regions.append(region_index(start, self.roi_size, boxes[b][0], boxes[b][1], self.region_grid))
            region = torch.as_tensor(regions, dtype=torch.long, device=windows.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp and windows.device.type == "cuda"):
                out = network(windows, region)
            if not score_map:
                return out.anomaly_map.float()
            score = out.score.float().reshape(-1, *([1] * (windows.ndim - 1))) * torch.ones_like(out.anomaly_map, dtype=torch.float32)
            return out.anomaly_map.float(), score.float()

        with torch.no_grad():
            stitched = sliding_window_inference(
                inputs,
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=predictor,
                overlap=self.overlap,
                mode=self.mode,
                padding_mode="replicate",
                sw_device=self.sw_device,
                device=self.device,
                progress=self.progress,
                with_coord=True,
            )
        crop = (slice(None), slice(None), *(slice(m, m + n) for m, n in zip(self.margin, spatial)))
        if not score_map:
            return AnomalyInferenceResult(stitched[crop], None)  # type: ignore[arg-type]
        amap, smap = stitched
        return AnomalyInferenceResult(amap[crop], smap[crop])

    def _add_margin(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pad ``inputs`` by ``margin`` voxels on each side of each axis (mirrored, or replicated where too short)."""
        if not any(self.margin):
            return inputs
        for axis, m in enumerate(self.margin):
            if m == 0:
                continue
            mode = self.margin_mode if inputs.shape[2 + axis] > m else "replicate"
            pads = [0, 0] * len(self.margin)
            k = 2 * (len(self.margin) - 1 - axis)  # F.pad lists the last axis first
            pads[k : k + 2] = [m, m]
            inputs = F.pad(inputs, pads, mode=mode)
        return inputs
