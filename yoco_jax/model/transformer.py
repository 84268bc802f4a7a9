"""The Llama-style GQA Transformer baseline, with the same norm, FFN and rotary as YOCO."""

from __future__ import annotations

import flax.linen as nn
from jaxtyping import Array, ArrayLike, Float, Int, Real

from yoco_jax.model.block import ACTIVATION_AXES
from yoco_jax.model.cache import TransformerCache
from yoco_jax.model.lm import (
    LanguageModel,
    check_logits,
    last_tokens,
    new_token_layout,
    sequence_layout,
)
from yoco_jax.model.scan import make_layers, run_layers


class Transformer(LanguageModel):
    """n_layers of causal self-attention (n_attn_heads, n_attn_kv_heads) + SwiGLU; one KV cache
    per layer. Same methods as YOCO."""

    def setup(self):
        super().setup()
        cfg = self.config
        self.layers = make_layers(cfg, "attention", cfg.n_layers)

    def _run(self, tokens, positions, caches=None, valid=None, fresh=False, segment_ids=None):
        x = nn.with_logical_constraint(self.embed_tokens(tokens), ACTIVATION_AXES)
        return run_layers(self.layers, x, positions, fresh, caches, valid, segment_ids)

    def hidden(
        self,
        tokens: Int[ArrayLike, "B T"],
        positions: Int[ArrayLike, "B T"] | None = None,
        segment_ids: Int[ArrayLike, "B T"] | None = None,
    ) -> Float[Array, "B T D"]:
        positions, segment_ids = sequence_layout(tokens, positions, segment_ids)
        return self.layer_norm(self._run(tokens, positions, segment_ids=segment_ids)[0])

    def extend(
        self,
        tokens: Int[ArrayLike, "B T"],
        cache: TransformerCache,
        n_new: Real[ArrayLike, " B"] | None = None,
        fresh: bool = False,
        logits: str = "last",
    ) -> tuple[Float[Array, "B V"] | Float[Array, "B T V"], TransformerCache]:
        """As YOCO.extend; every layer runs over every new token (no early exit)."""
        check_logits(logits)
        n_new, valid, positions = new_token_layout(tokens, cache.lengths, n_new)
        x, layers = self._run(tokens, positions, cache.layers, valid, fresh)
        new_cache = TransformerCache(layers, cache.lengths + n_new)
        if logits == "all":
            return self.logits_all(x), new_cache
        return self.logits_of(last_tokens(x, n_new)), new_cache
