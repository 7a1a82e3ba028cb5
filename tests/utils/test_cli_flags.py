"""Switches given as text on the bundle command line are refused with one clear error."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigWorkflow

from conftest import bundle_config
from monai_simsid.utils.cli import require_flags
from monai_simsid.utils.errors import InputError


def test_booleans_pass_and_text_is_refused():
    require_flags(resume=False, amp=True, level=0)
    with pytest.raises(InputError, match=r"--resume 'false' is text.*--resume False"):
        require_flags(amp=True, resume="false")


@pytest.mark.parametrize("bundle", ["simsid_ct", "autoencoder_ct"])
def test_a_bundle_refuses_a_text_switch_before_training(bundle, tmp_path):
    wf = ConfigWorkflow(config_file=bundle_config(bundle, "train.json"), workflow_type="train",
                        datalist=str(tmp_path / "missing.json"), output_dir=str(tmp_path), resume="false")
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = info.value
    while err is not None and not isinstance(err, InputError):
        err = err.__cause__ or err.__context__
    assert isinstance(err, InputError) and "--resume" in str(err)
    assert not (tmp_path / "models").exists()  # nothing was started
