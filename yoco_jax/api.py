"""The small public API: a Model is a config plus its parameters."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.config import ModelConfig, get_config, replace_checked
from yoco_jax.errors import CheckpointError
from yoco_jax.model import build_model


@dataclasses.dataclass
class Model:
    """A YOCO (or baseline) model: `config`, `params` (a plain pytree of arrays) and, when one
    is known, the `tokenizer` that turns text prompts into tokens."""

    config: ModelConfig
    params: dict
    tokenizer: object = dataclasses.field(default=None, repr=False)

    @property
    def module(self) -> nn.Module:
        return build_model(self.config)

    def check_tokens(self, tokens) -> jnp.ndarray:
        """int32 [B, T] tokens, or a clear error naming what is wrong with them."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(
                f"tokens must be a 2-D int array [batch, time], got shape {tokens.shape}"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}) (the vocabulary); got "
                f"min {tokens.min()}, max {tokens.max()}"
            )
        return jnp.asarray(tokens, jnp.int32)

    def logits(self, tokens) -> jax.Array:
        """float32 logits [B, T, vocab] for int tokens [B, T]."""
        return _logits(self.config, self.params, self.check_tokens(tokens))

    def generate(self, prompts, max_new_tokens: int = 32, **kwargs):
        """Completions of token-list or text prompts: temperature, top_k, top_p, stop, seed...
        (see `yoco_jax.inference.generate`)."""
        from yoco_jax.inference import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    def prefill(self, prompts, **kwargs):
        """Runs prompts into a fresh cache (see `yoco_jax.inference.prefill`)."""
        from yoco_jax.inference import prefill

        return prefill(self, prompts, **kwargs)

    def decode(self, state, **kwargs):
        """Continues a decode state (see `yoco_jax.inference.decode`)."""
        from yoco_jax.inference import decode

        return decode(self, state, **kwargs)

    def save_official(self, path, dtype: str = "float32") -> Path:
        """Writes the official PyTorch layout (params.json + model.safetensors)."""
        from yoco_jax.export import write_official

        return write_official(path, self.config, self.params, dtype)

    def replace(self, **overrides) -> Model:
        """The same weights under a config with `overrides` (e.g. dtype, attention_impl)."""
        return Model(replace_checked(self.config, **overrides), self.params, self.tokenizer)


@jax.jit(static_argnums=0)
def _logits(config: ModelConfig, params, tokens):
    return build_model(config).apply({"params": params}, tokens)


def init(config: ModelConfig | str, seed: int = 0) -> Model:
    """A freshly initialized model (float32 params unless config.param_dtype says otherwise)."""
    config = get_config(config) if isinstance(config, str) else config
    variables = jax.jit(build_model(config).init)(
        jax.random.key(seed), jnp.zeros((1, 1), jnp.int32)
    )
    return Model(config, nn.unbox(variables["params"]))


def load_pretrained(path: str | os.PathLike, **overrides) -> Model:
    """Loads an official-layout folder (params.json + model.safetensors / *.pth) or a training
    output folder of this project (its latest checkpoint), with its tokenizer when known."""
    from yoco_jax.inference.tokenizer import find_tokenizer

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if (path / "params.json").exists():
        from yoco_jax.export import read_official

        config, params = read_official(path, **overrides)
    else:
        from yoco_jax.train.checkpoint import load_params

        try:
            config, params = load_params(path)
        except FileNotFoundError as e:
            raise CheckpointError(
                f"{path} is neither an official-layout folder (no params.json) nor a training "
                f"output folder with a checkpoint ({e})"
            ) from e
        config = replace_checked(config, **overrides)
    return Model(config, params, find_tokenizer(path, config.vocab_size))
