"""The owned decoder: one PyTorch implementation for training, export and the reference runtime.

transformers is only the weight source (config parsing) and the parity oracle; it is never traced.
"""

from latentcache.model.config import SUPPORTED_MODEL_TYPES, ModelConfig
from latentcache.model.decoder import Decoder, KVCache
from latentcache.model.loading import load_decoder

__all__ = ["SUPPORTED_MODEL_TYPES", "Decoder", "KVCache", "ModelConfig", "load_decoder"]
