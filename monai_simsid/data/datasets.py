"""Preprocessed in-memory datasets for training, validation and calibration."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch

from monai_simsid.transforms.anomaly import RandEllipsoidLesiond
from monai_simsid.utils.errors import InputError, find_input_error

__all__ = [
    "build_validation_data",
    "load_calibration_items",
    "preprocess_all",
    "select_calibration_items",
    "with_lesion_flag",
]

logger = logging.getLogger(__name__)


def preprocess_all(
    entries: Sequence[dict], preprocessing: Callable, skip_bad: bool = False, errors: list | None = None
) -> list[dict]:
    """Run the (deterministic) preprocessing on every entry, keeping the results in memory.

    Args:
        entries: datalist entries (``{"image": path[, "label": path]}``).
        preprocessing: the shared chain (see :func:`monai_simsid.apps.build_preprocessing`).
        skip_bad: skip entries whose input is bad (logged, and appended to ``errors``) instead of raising.
        errors: collects ``(path, problem)`` for skipped entries.

    Raises:
        InputError: the first bad input, as one clear line, unless ``skip_bad``.
    """
    out = []
    for e in entries:
        try:
            out.append(preprocessing(dict(e)))
        except Exception as exc:  # noqa: BLE001 - MONAI wraps transform errors; find the real cause
            err = find_input_error(exc)
            if err is None:
                err = InputError(e.get("image"), f"preprocessing failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
            if not skip_bad:
                raise err from None
            logger.warning("skipping %s", err)
            if errors is not None:
                errors.append((err.path, err.problem))
    return out


def with_lesion_flag(item: dict, label_key: str = "label", body_key: str = "body") -> dict:
    """Add ``is_anomalous`` (1 if the item has a non-empty lesion mask) and an all-zero mask for normals."""
    item = dict(item)
    if item.get(label_key) is None:
        item[label_key] = torch.zeros_like(torch.as_tensor(item[body_key]))
    item["is_anomalous"] = torch.tensor(float(torch.as_tensor(item[label_key]).sum() > 0))
    return item


def build_validation_data(
    items: Sequence[dict],
    inject_if_no_lesions: bool = True,
    seed: int = 0,
    image_key: str = "image",
    label_key: str = "label",
    body_key: str = "body",
    radius_range: Sequence[float] = (0.04, 0.1),
) -> list[dict]:
    """Validation items with a lesion flag; synthetic lesions are injected when there is no lesion case.

    When the validation set holds only normals, every normal also appears once more with one irregular ellipsoid
    lesion (:class:`~monai_simsid.transforms.anomaly.RandEllipsoidLesiond`, inside the body, seeded by ``seed``
    and the item index, so validation is the same at every epoch and in every run).
    """
    flagged = [with_lesion_flag(i, label_key, body_key) for i in items]
    if not inject_if_no_lesions or any(float(i["is_anomalous"]) > 0 for i in flagged):
        return flagged
    out = list(flagged)
    for idx, item in enumerate(flagged):
        t = RandEllipsoidLesiond(
            keys=image_key, mask_key=label_key, restrict_key=body_key, radius_range=radius_range, polarity="both"
        )
        t.set_random_state(seed + idx)
        src = {k: v for k, v in item.items() if k != label_key}
        injected = t(src)
        injected[label_key] = torch.as_tensor(injected[label_key]).float()
        out.append(with_lesion_flag(injected, label_key, body_key))
    return out


def _is_normal(item: dict, label_key: str = "label") -> bool:
    """Whether a preprocessed item is a normal scan: no label, or an empty one."""
    return item.get(label_key) is None or float(torch.as_tensor(item[label_key]).sum()) == 0


def load_calibration_items(
    datalist: str | os.PathLike, preprocessing: Callable, training_items: Sequence[dict] | None = None
) -> tuple[list[dict], str]:
    """Preprocessed normal scans of a datalist for calibration, as :func:`select_calibration_items` picks them.

    The validation section's normal scans when it has any; otherwise the training scans (only then are they loaded,
    unless ``training_items`` gives them already preprocessed).
    """
    from monai_simsid.data.datalist import load_datalist

    val = preprocess_all(load_datalist(datalist, "validation", missing_ok=True), preprocessing)
    if any(_is_normal(i) for i in val):
        return select_calibration_items(val, [])
    if training_items is None:
        training_items = preprocess_all(load_datalist(datalist, "training"), preprocessing)
    return select_calibration_items([], training_items)


def select_calibration_items(val_items: Sequence[dict], train_items: Sequence[dict], label_key: str = "label") -> tuple[list[dict], str]:
    """Normal scans for calibration: the validation normals, else the training normals (with a warning).

    Returns:
        the items and a description of their source (recorded in the checkpoint and every report).
    """
    normals = [i for i in val_items if _is_normal(i, label_key)]
    if normals:
        return normals, f"{len(normals)} validation normal scan(s)"
    logger.warning("no normal validation scan: calibrating on the training normals (thresholds will be optimistic)")
    return list(train_items), f"{len(train_items)} training normal scan(s) (no validation normals available)"
