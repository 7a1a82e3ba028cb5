"""Tests of the ignite metric handlers on a tiny Engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import from_engine

from monai_simsid.handlers import SampleAP, SampleAUROC, VoxelAP, VoxelAUROC
from monai_simsid.metrics import compute_sample_ap, compute_sample_auroc, compute_voxel_ap, compute_voxel_auroc


def _run(batches, handlers):
    engine = Engine(lambda e, batch: batch)
    for name, h in handlers.items():
        h.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return engine.state.metrics


def test_sample_handlers_match_functions():
    rng = np.random.default_rng(0)
    scores = rng.random(12).astype(np.float32)
    labels = np.array([0, 1] * 6)
    # decollated-style output: list of per-sample dicts, as produced by MONAI's SupervisedEvaluator
    batches = [
        [{"score": torch.tensor([scores[i]]), "label": torch.tensor([labels[i]])} for i in range(j, j + 4)]
        for j in range(0, 12, 4)
    ]
    tf = from_engine(["score", "label"])
    metrics = _run(batches, {"auc": SampleAUROC(output_transform=tf), "ap": SampleAP(output_transform=tf)})
    assert metrics["auc"] == pytest.approx(compute_sample_auroc(scores, labels).value)
    assert metrics["ap"] == pytest.approx(compute_sample_ap(scores, labels).value)


def test_voxel_handlers_match_functions_with_region_mask():
    rng = np.random.default_rng(1)
    maps = rng.random((4, 1, 6, 6, 5)).astype(np.float32)
    labels = (rng.random((4, 1, 6, 6, 5)) > 0.8).astype(np.float32)
    maps += 0.5 * labels
    body = np.zeros_like(labels, dtype=bool)
    body[..., 1:5, 1:5, :] = True
    batches = [
        {k: torch.as_tensor(v[i : i + 2]) for k, v in (("pred", maps), ("label", labels), ("body", body))}
        for i in (0, 2)
    ]
    metrics = _run(
        batches,
        {
            "auc": VoxelAUROC(output_transform=from_engine(["pred", "label", "body"])),
            "ap": VoxelAP(output_transform=from_engine(["pred", "label"])),
        },
    )
    assert metrics["auc"] == pytest.approx(compute_voxel_auroc(list(maps), list(labels), list(body)).value)
    assert metrics["ap"] == pytest.approx(compute_voxel_ap(list(maps), list(labels)).value)
    assert metrics["auc"] != pytest.approx(compute_voxel_auroc(list(maps), list(labels)).value, abs=1e-9)


def test_handler_undefined_returns_none_or_fallback():
    batches = [{"score": torch.rand(3), "label": torch.zeros(3)}]
    h = SampleAUROC(output_transform=from_engine(["score", "label"]))
    metrics = _run(batches, {"auc": h, "auc0": SampleAUROC(from_engine(["score", "label"]), undefined_value=0.0)})
    assert metrics["auc"] is None and "positive" in h.last_reason
    assert metrics["auc0"] == 0.0
    with pytest.raises(ValueError):
        h.update((torch.rand(2), torch.zeros(2), torch.zeros(2)))
