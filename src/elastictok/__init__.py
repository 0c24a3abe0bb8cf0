"""elastictok: adaptive tokenization of images and video (ElasticTok, Yan et al., ICLR 2025) in PyTorch."""

from .config import PRESETS, ElasticTokConfig
from .model import ElasticTok, StreamState
from .tokens import Tokens

__all__ = ["ElasticTok", "ElasticTokConfig", "PRESETS", "StreamState", "Tokens"]
__version__ = "0.1.0"
