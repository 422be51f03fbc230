"""The MSRF-Net model, block by block with the paper's names."""

from .dense import DenseConv2d, set_memory_efficient
from .decoder import AttentionGate, DecoderBlock, DualAttention, FinalDecoder
from .dsdf import DSDFBlock, MSRFSubnetwork
from .encoder import Encoder, EncoderStage
from .msrfnet import VARIANTS, MSRFNet, predict_proba
from .outputs import MSRFOutput
from .shape_stream import ShapeStream

__all__ = [
    "MSRFNet", "MSRFOutput", "predict_proba", "VARIANTS", "Encoder", "EncoderStage", "DSDFBlock",
    "MSRFSubnetwork", "ShapeStream", "AttentionGate", "DualAttention", "DecoderBlock", "FinalDecoder",
    "DenseConv2d", "set_memory_efficient",
]
