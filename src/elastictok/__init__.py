"""elastictok: adaptive tokenization of images and video (ElasticTok, Yan et al., ICLR 2025) in PyTorch."""

from elastictok._version import __version__
from elastictok.coding.adaptive import AdaptiveResult, encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target
from elastictok.model.autoencoder import ElasticTok, StreamState
from elastictok.model.config import PRESETS, ElasticTokConfig
from elastictok.model.tokens import Tokens
from elastictok.weights.pretrained import load_default_model, load_pretrained

__all__ = [
    "PRESETS", "AdaptiveResult", "CodingOptions", "ElasticTok", "ElasticTokConfig", "StreamState", "Target", "Tokens",
    "__version__", "encode_adaptive", "load_default_model", "load_pretrained",
]
