from __future__ import annotations

import json

import pytest

from monai_simsid.data.datalist import case_name, list_folder, load_datalist, resolve_inputs
from monai_simsid.utils.errors import InputError


def test_relative_paths_resolve_against_json(tmp_path, ct_file):
    img = ct_file(name="a_ct.nii.gz")
    lab = ct_file(name="a_lesion.nii.gz")
    (tmp_path / "sub").mkdir()
    dl = tmp_path / "sub" / "datalist.json"
    dl.write_text(json.dumps({"training": [{"image": "../a_ct.nii.gz"}], "test": [{"image": "../a_ct.nii.gz", "label": "../a_lesion.nii.gz"}]}))
    train = load_datalist(dl, "training")
    assert train == [{"image": str(img.resolve())}]
    test = load_datalist(dl, "test")
    assert test[0]["label"] == str(lab.resolve())


def test_an_exclusion_mask_path_is_resolved_and_checked(tmp_path, ct_file):
    img = ct_file(name="n_ct.nii.gz")
    ex = ct_file(name="n_exclude.nii.gz")
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "n_ct.nii.gz", "exclude": "n_exclude.nii.gz"}]}))
    assert load_datalist(dl) == [{"image": str(img.resolve()), "exclude": str(ex.resolve())}]
    dl.write_text(json.dumps({"training": [{"image": "n_ct.nii.gz", "exclude": "gone.nii.gz"}]}))
    with pytest.raises(InputError, match="gone.nii.gz.*does not exist"):
        load_datalist(dl)


def test_missing_file_names_the_file(tmp_path):
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "nope.nii.gz"}]}))
    with pytest.raises(InputError, match="nope.nii.gz.*does not exist"):
        load_datalist(dl)


def test_malformed_json_and_missing_section(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{training: [")
    with pytest.raises(InputError, match="bad.json.*not valid JSON"):
        load_datalist(bad)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"training": []}))
    with pytest.raises(InputError, match="no 'test' section"):
        load_datalist(ok, "test")


def test_folder_mode_finds_volumes_and_dicom(tmp_path, ct_file):
    ct_file(name="b.nii.gz")
    ct_file(name="a.nii")
    (tmp_path / ".tmp_half.nii.gz").write_bytes(b"x")
    series = tmp_path / "series1"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"\0" * 200)
    items = [i["image"] for i in list_folder(tmp_path)]
    assert [case_name(p) for p in items] == ["a", "b", "series1"]
    with pytest.raises(ValueError):
        resolve_inputs()
    with pytest.raises(InputError, match="does not exist"):
        list_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT volume"):
        list_folder(tmp_path / "empty")


def test_case_name_strips_extensions(tmp_path):
    assert case_name("/x/y/lung2_ct.nii.gz") == "lung2_ct"
    assert case_name("/x/scan.mha") == "scan"
    assert case_name("/x/scan.nrrd") == "scan"
