"""The MSRF-Net model, block by block with the paper's names."""

from msrfnet.model.decoder import AttentionGate, DecoderBlock, DualAttention, FinalDecoder
from msrfnet.model.dense import DenseConv2d
from msrfnet.model.dsdf import DSDFBlock, MSRFSubnetwork
from msrfnet.model.encoder import Encoder, EncoderStage
from msrfnet.model.msrfnet import UPSAMPLING, VARIANTS, MSRFNet, predict_proba
from msrfnet.model.outputs import MSRFOutput
from msrfnet.model.shape_stream import ShapeStream

__all__ = [
    "MSRFNet",
    "MSRFOutput",
    "predict_proba",
    "VARIANTS",
    "UPSAMPLING",
    "Encoder",
    "EncoderStage",
    "DSDFBlock",
    "MSRFSubnetwork",
    "ShapeStream",
    "AttentionGate",
    "DualAttention",
    "DecoderBlock",
    "FinalDecoder",
    "DenseConv2d",
]
