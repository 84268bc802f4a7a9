"""Flax linen modules of YOCO and of the Transformer baseline."""

from yoco_jax.config import ModelConfig
from yoco_jax.model.cache import cache_bytes, init_cache
from yoco_jax.model.transformer import Transformer
from yoco_jax.model.yoco import YOCO


def build_model(config: ModelConfig):
    """The linen module for `config.arch` ("yoco" or "transformer")."""
    return Transformer(config) if config.arch == "transformer" else YOCO(config)


__all__ = ["YOCO", "Transformer", "build_model", "cache_bytes", "init_cache"]
