"""The Llama-style GQA Transformer baseline, with the same norm, FFN and rotary as YOCO."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.model.block import ACTIVATION_AXES, layer_class
from yoco_jax.model.cache import TransformerCache
from yoco_jax.model.layers import Embed, Linear, RMSNorm
from yoco_jax.model.yoco import default_positions


class Transformer(nn.Module):
    """n_layers of causal self-attention (n_attn_heads, n_attn_kv_heads) + SwiGLU; one KV cache
    per layer. Same methods as YOCO."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = Embed(cfg.vocab_size, cfg.dim, cfg.dtype, cfg.param_dtype)
        self.layers = [layer_class(cfg)(cfg, "attention") for _ in range(cfg.n_layers)]
        self.layer_norm = RMSNorm(cfg.norm_eps, True, cfg.dtype, cfg.param_dtype)
        self.output_projection = Linear(
            cfg.vocab_size, ("embed", "vocab"), cfg.dtype, cfg.param_dtype
        )

    def _run(self, tokens, positions, caches=None, valid=None, fresh=False):
        x = nn.with_logical_constraint(self.embed_tokens(tokens), ACTIVATION_AXES)
        new = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, fresh, (None if caches is None else caches[i], valid))
            new.append(c)
        return x, tuple(new)

    def hidden(
        self, tokens: Int[Array, "B T"], positions: Int[Array, "B T"] | None = None
    ) -> Float[Array, "B T D"]:
        positions = default_positions(tokens) if positions is None else positions
        return self.layer_norm(self._run(tokens, positions)[0])

    def __call__(
        self, tokens: Int[Array, "B T"], positions: Int[Array, "B T"] | None = None
    ) -> Float[Array, "B T V"]:
        return self.output_projection(self.hidden(tokens, positions)).astype(jnp.float32)

    def extend(
        self,
        tokens: Int[Array, "B T"],
        cache: TransformerCache,
        n_new: Int[Array, " B"] | None = None,
        fresh: bool = False,
    ) -> tuple[Float[Array, "B V"], TransformerCache]:
        """As YOCO.extend; every layer runs over every new token (no early exit)."""
        b, t = tokens.shape
        n_new = jnp.full((b,), t, jnp.int32) if n_new is None else n_new.astype(jnp.int32)
        valid = jnp.arange(t)[None, :] < n_new[:, None]
        positions = cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
        x, layers = self._run(tokens, positions, cache.layers, valid, fresh)
        last = jnp.take_along_axis(x, jnp.maximum(n_new - 1, 0)[:, None, None], axis=1)
        logits = self.output_projection(self.layer_norm(last))[:, 0].astype(jnp.float32)
        return logits, TransformerCache(layers, cache.lengths + n_new)
