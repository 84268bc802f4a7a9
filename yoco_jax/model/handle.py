"""What inference, evaluation and serving receive: a model's config, its parameters and the
tokenizer that goes with it (or None). `yoco_jax.Model` (api.py) is this plus methods."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from yoco_jax.config import ModelConfig


@dataclasses.dataclass
class ModelHandle:
    """`config`; `params` (a plain pytree of arrays); `tokenizer`: a yoco_jax.data.Tokenizer that
    turns text prompts into tokens, or None (token prompts only)."""

    config: ModelConfig
    params: Any
    tokenizer: Any = dataclasses.field(default=None, repr=False)

    def check_tokens(self, tokens) -> np.ndarray:
        """int32 [B, T] tokens as a host array, or a clear error naming what is wrong with them
        (checked on the host: nothing is copied to the device)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(
                f"tokens must be a 2-D int array [batch, time], got shape {tokens.shape}"
            )
        if tokens.size == 0:
            raise ValueError(
                f"tokens of shape {tokens.shape} are empty: give at least one row of one token"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}) (the vocabulary); got "
                f"min {tokens.min()}, max {tokens.max()}"
            )
        return tokens.astype(np.int32, copy=False)
