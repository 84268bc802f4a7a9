"""What YOCO and the Transformer baseline share: embedding, final norm, output projection."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from yoco_jax.config import ModelConfig
from yoco_jax.model.layers import Embed, Linear, RMSNorm
from yoco_jax.ops.documents import document_positions


def default_positions(tokens: Int[ArrayLike, "B T"]) -> Int[Array, "B T"]:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def sequence_layout(
    tokens: Int[ArrayLike, "B T"],
    positions: Int[ArrayLike, "B T"] | None,
    segment_ids: Int[ArrayLike, "B T"] | None,
) -> tuple[Int[Array, "B T"], Int[Array, "B T"] | None]:
    """A whole sequence's (positions, segment ids as an array or None): positions default to
    0, 1, ... along each row, restarting at each packed document where `segment_ids` say."""
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
    if positions is None:
        no_documents = segment_ids is None
        positions = default_positions(tokens) if no_documents else document_positions(segment_ids)
    return positions, segment_ids


def new_token_layout(
    tokens: Int[ArrayLike, "B T"], lengths: Int[Array, " B"], n_new: Real[ArrayLike, " B"] | None
) -> tuple[Int[Array, " B"], Bool[Array, "B T"], Int[Array, "B T"]]:
    """For right-padded new tokens after `lengths`: (n_new as int32, valid mask, positions);
    `n_new` counts in any real dtype (whole numbers) are cast."""
    b, t = tokens.shape
    n_new = jnp.full((b,), t, jnp.int32) if n_new is None else n_new.astype(jnp.int32)
    valid = jnp.arange(t)[None, :] < n_new[:, None]
    positions = lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    return n_new, valid, positions


def last_tokens(x: Float[Array, "B T D"], n_new: Int[Array, " B"]) -> Float[Array, "B 1 D"]:
    """Each row's last new token (row 0 where a row has none: its output is ignored)."""
    return jnp.take_along_axis(x, jnp.maximum(n_new - 1, 0)[:, None, None], axis=1)


def check_logits(logits: str) -> None:
    """`extend`'s `logits`: "last" (each row's last new token) or "all" (every new position)."""
    if logits not in ("last", "all"):
        raise ValueError(f'logits={logits!r} must be "last" or "all"')


class LanguageModel(nn.Module):
    """Token embedding in, final RMSNorm and output projection out; subclasses add the body
    in `setup` and define `hidden` (final-normed states) and `extend` (cached inference)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = Embed(cfg.vocab_size, cfg.dim, cfg.dtype, cfg.param_dtype)
        self.layer_norm = RMSNorm(cfg.norm_eps, True, cfg.dtype, cfg.param_dtype)
        self.output_projection = Linear(
            cfg.vocab_size, ("embed", "vocab"), cfg.dtype, cfg.param_dtype
        )

    def __call__(
        self,
        tokens: Int[ArrayLike, "B T"],
        positions: Int[ArrayLike, "B T"] | None = None,
        segment_ids: Int[ArrayLike, "B T"] | None = None,
    ) -> Float[Array, "B T V"]:
        """float32 logits for every position; `segment_ids` (1, 2, ... per packed document, 0 on
        padding): each document computed as if alone (ops/documents.py)."""
        hidden = self.hidden(tokens, positions, segment_ids)
        return self.output_projection(hidden).astype(jnp.float32)

    def logits_all(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        """float32 logits of un-normed final states."""
        return self.output_projection(self.layer_norm(x)).astype(jnp.float32)

    def logits_of(self, x: Float[Array, "B 1 D"]) -> Float[Array, "B V"]:
        """float32 logits of un-normed final states of one token per row."""
        return self.logits_all(x)[:, 0]
