"""Evaluator that scores whole preprocessed scans with any anomaly model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.engines.utils import default_metric_cmp_fn

from monai_simsid.inferers.anomaly import AnomalyInferer
from monai_simsid.inferers.scoring import scan_score

__all__ = ["AnomalyEvaluator"]


class AnomalyEvaluator(Evaluator):
    """Run an :class:`~monai_simsid.inferers.AnomalyInferer` over full scans (batch size 1) and score each scan.

    Each iteration outputs ``pred`` (the scan score, shape (1,)), ``label`` (1 for a lesion case), and the stitched
    ``anomaly_map``, ``score_map``, ``body`` and lesion ``mask`` for voxel metrics.

    Args:
        device: device of the stitched maps.
        val_data_loader: yields preprocessed scans with ``image``, ``body`` and ``is_anomalous`` (and ``label``).
        network: an anomaly model (eval-mode named result with ``anomaly_map`` and ``score``).
        inferer: the sliding-window inferer.
        score_method, topk_fraction: see :func:`~monai_simsid.inferers.scoring.scan_score`.
        key_val_metric, additional_metrics, val_handlers, metric_cmp_fn, amp: as in MONAI's evaluators.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: AnomalyInferer,
        score_method: str = "topk",
        topk_fraction: float = 0.001,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        val_handlers: Sequence | None = None,
        metric_cmp_fn: Any = default_metric_cmp_fn,
        amp: bool = False,
        image_key: str = "image",
        body_key: str = "body",
        label_key: str = "label",
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.inferer = inferer
        self.score_method = score_method
        self.topk_fraction = topk_fraction
        self.image_key, self.body_key, self.label_key = image_key, body_key, label_key

    def _iteration(self, engine: AnomalyEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        x = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device).float()
        body = batchdata.get(self.body_key)
        body = None if body is None else torch.as_tensor(body).to(engine.state.device)
        self.network.eval()
        result = self.inferer(x, self.network, body)
        scores = [
            scan_score(result.anomaly_map[i], result.score_map[i], None if body is None else body[i], self.score_method, self.topk_fraction)
            for i in range(x.shape[0])
        ]
        flag = batchdata.get("is_anomalous")
        label = torch.zeros(x.shape[0]) if flag is None else torch.as_tensor(flag).float().reshape(-1)
        return {
            "pred": torch.tensor(scores),
            "label": label,
            "anomaly_map": result.anomaly_map,
            "score_map": result.score_map,
            "body": body,
            "mask": batchdata.get(self.label_key),
        }
