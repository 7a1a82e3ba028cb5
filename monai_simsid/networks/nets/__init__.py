"""Networks."""

from __future__ import annotations

from .autoencoder import AutoEncoderOutput, AutoEncoderTrainOutput, ConvAutoEncoder
from .cutpaste import CutPasteNet, CutPasteOutput, CutPasteTrainOutput, GaussianDensity
from .discriminator import SimSIDDiscriminator
from .ganomaly import GANomaly, GANomalyOutput, GANomalyTrainOutput, extract_encoder_state_dict
from .simsid import SimSID, SimSIDOutput, SimSIDTrainOutput

__all__ = ["SimSID", "SimSIDDiscriminator", "SimSIDOutput", "SimSIDTrainOutput"]
__all__ += [
    "AutoEncoderOutput", "AutoEncoderTrainOutput", "ConvAutoEncoder",
    "CutPasteNet", "CutPasteOutput", "CutPasteTrainOutput", "GaussianDensity",
    "GANomaly", "GANomalyOutput", "GANomalyTrainOutput", "extract_encoder_state_dict",
]
