from __future__ import annotations

import os

import pytest
import torch

from monai_simsid.utils.atomic import atomic_path, atomic_torch_save, atomic_write_text, full_suffix
from monai_simsid.utils.errors import InputError


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_temp_name_keeps_extension_and_folder(tmp_path):
    final = tmp_path / "case_anomaly_map.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".case_anomaly_map.nii.gz.tmp-")
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"abc")
        assert not final.exists()
    assert final.read_bytes() == b"abc"
    assert _leftovers(tmp_path) == []
    assert full_suffix("x.seg.nrrd") == ".seg.nrrd" and full_suffix("scores.csv") == ".csv"


def test_exception_midway_leaves_old_file_and_no_temp(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    payload = b"x" * 1000

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as f:
                f.write(payload[: len(payload) // 2])
                f.flush()
                raise Boom("disk full")
    assert final.read_text() == "old"
    assert _leftovers(tmp_path) == []

    new = tmp_path / "new.json"
    with pytest.raises(Boom):
        with atomic_path(new) as tmp:
            tmp.write_bytes(payload[:500])
            raise Boom()
    assert not new.exists()
    assert _leftovers(tmp_path) == []


def test_write_text_and_torch_save(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    ck = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "model.pt")
    assert torch.equal(torch.load(ck)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        atomic_write_text(tmp_path / "b.txt", b"bytes")


@pytest.mark.parametrize("kind", ["under_file", "missing"])
def test_unwritable_folder_raises_input_error(tmp_path, kind):
    if kind == "under_file":
        (tmp_path / "file.txt").write_text("x")
        folder = tmp_path / "file.txt" / "sub"
    else:
        folder = tmp_path / "does_not_exist"
    with pytest.raises(InputError) as info:
        atomic_write_text(folder / "x.nii.gz", "data")
    assert info.value.path == str(folder)
    assert "not writable" in str(info.value)
    assert os.listdir(tmp_path) in ([], ["file.txt"])
