"""yoco-jax: YOCO decoder-decoder language models in JAX/Flax."""

from yoco_jax.api import Model, init, load_pretrained
from yoco_jax.config import ModelConfig, get_config
from yoco_jax.errors import CheckpointError, ConfigError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Model",
    "ModelConfig",
    "get_config",
    "init",
    "load_pretrained",
]
