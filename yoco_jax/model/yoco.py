"""YOCO: a self-decoder of efficient mixers, then a cross-decoder reading ONE global KV cache."""

from __future__ import annotations

import flax.linen as nn
from jaxtyping import Array, ArrayLike, Float, Int, Real

from yoco_jax import sharding
from yoco_jax.config import ModelConfig
from yoco_jax.model.block import ACTIVATION_AXES
from yoco_jax.model.cache import YOCOCache
from yoco_jax.model.layers import Linear, RMSNorm
from yoco_jax.model.lm import (
    LanguageModel,
    check_logits,
    last_tokens,
    new_token_layout,
    sequence_layout,
)
from yoco_jax.model.rotary import apply_rotary
from yoco_jax.model.scan import make_layers, run_cross, run_layers
from yoco_jax.ops import context_parallel


class SelfDecoder(nn.Module):
    """n_layers/2 layers of gated retention (or sliding-window attention)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        mixer = "window" if cfg.sliding_window is not None else "retention"
        self.layers = make_layers(cfg, mixer, cfg.half_layers)

    def __call__(self, x, positions, caches=None, valid=None, fresh=False, segment_ids=None):
        """Returns the output and the new per-layer caches (None without caches)."""
        return run_layers(self.layers, x, positions, fresh, caches, valid, segment_ids)


class CrossDecoder(nn.Module):
    """RMSNorm -> one K and one V projection (the global cache) -> n_layers/2 cross layers."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        kv = cfg.n_attn_kv_heads * cfg.attn_head_dim
        self.kv_layer_norm = RMSNorm(cfg.norm_eps, True, cfg.dtype, cfg.param_dtype)
        self.k_proj = Linear(kv, ("embed", "kv_heads"), cfg.dtype, cfg.param_dtype)
        self.v_proj = Linear(kv, ("embed", "kv_heads"), cfg.dtype, cfg.param_dtype)
        self.layers = make_layers(cfg, "cross", cfg.half_layers)

    def project_kv(self, x, positions):
        """The global K (with rotary) and V, `[B, T, n_attn_kv_heads, attn_head_dim]`."""
        cfg = self.config
        b, t, _ = x.shape
        shape = (b, t, cfg.n_attn_kv_heads, cfg.attn_head_dim)
        h = self.kv_layer_norm(x)
        k = apply_rotary(self.k_proj(h).reshape(shape), positions, cfg.rope_theta)
        return k, self.v_proj(h).reshape(shape)

    def __call__(
        self,
        x,
        positions,
        k,
        v,
        lengths=None,
        kv_positions=None,
        scales=(None, None),
        segments=None,
    ):
        """`scales`: (k_scale, v_scale) of int8 K/V (a QuantizedKV cache), else Nones;
        `segments`: packed documents' (query, key) segment ids."""
        args = (k, v, lengths, kv_positions, *scales, segments)
        return run_cross(self.layers, x, positions, args)


class YOCO(LanguageModel):
    """The decoder-decoder language model.

    `__call__`/`hidden` run the whole sequence (training, scoring). `extend` consumes new tokens
    into an explicit cache: the self-decoder runs over them, their K/V are written once into the
    global cache, and the cross-decoder runs only at each sequence's last new token (early exit).
    """

    def setup(self):
        super().setup()
        self.self_decoder = SelfDecoder(self.config)
        self.cross_decoder = CrossDecoder(self.config)

    def hidden(
        self,
        tokens: Int[ArrayLike, "B T"],
        positions: Int[ArrayLike, "B T"] | None = None,
        segment_ids: Int[ArrayLike, "B T"] | None = None,
    ) -> Float[Array, "B T D"]:
        """Final-normed hidden states (before the output projection); `segment_ids`: packed
        documents, each computed as if alone (ops/documents.py)."""
        positions, segment_ids = sequence_layout(tokens, positions, segment_ids)
        x = nn.with_logical_constraint(self.embed_tokens(tokens), ACTIVATION_AXES)
        x, _ = self.self_decoder(x, positions, segment_ids=segment_ids)
        k, v = self.cross_decoder.project_kv(x, positions)
        if sharding.tracing().context_size > 1:  # one gather of the global K/V (or the ring)
            k, v, kv_pos, kv_seg = context_parallel.gather_kv(
                k, v, positions, self.config.context_attention, segment_ids
            )
            # Zig-zag order for the cross-decoder (per token but for attention): equal causal work.
            x, positions, seg = (
                None if a is None else context_parallel.balance(a)
                for a in (x, positions, segment_ids)
            )
            segments = None if seg is None else (seg, kv_seg)
            x = self.cross_decoder(x, positions, k, v, None, kv_pos, segments=segments)
            return self.layer_norm(context_parallel.unbalance(x))
        segments = None if segment_ids is None else (segment_ids, segment_ids)
        h = self.cross_decoder(x, positions, k, v, segments=segments)
        return self.layer_norm(h)

    def extend(
        self,
        tokens: Int[ArrayLike, "B T"],
        cache: YOCOCache,
        n_new: Real[ArrayLike, " B"] | None = None,
        fresh: bool = False,
        logits: str = "last",
    ) -> tuple[Float[Array, "B V"] | Float[Array, "B T V"], YOCOCache]:
        """Consumes right-padded tokens (n_new[b] real ones per row) after cache.lengths[b].

        Returns float32 logits and the updated cache. `logits="last"`: [B, V] at each row's last
        new token; the cross-decoder runs there only (early exit). `logits="all"`: [B, T, V] at
        every new position (scoring, prompt log-probs; padding positions hold garbage).
        `fresh=True` promises an empty cache (a first prefill): window attention skips the ring.
        """
        check_logits(logits)
        n_new, valid, positions = new_token_layout(tokens, cache.lengths, n_new)
        x = self.embed_tokens(tokens)
        x, self_caches = self.self_decoder(x, positions, cache.self_layers, valid, fresh)
        k, v = self.cross_decoder.project_kv(x, positions)
        kv = cache.kv.write(k, v, positions, valid)
        if sharding.tracing().context_size > 1:  # the global cache stays split along its length
            kv = type(kv)(*map(context_parallel.split_along_length, kv))
        lengths = cache.lengths + n_new
        new_cache = YOCOCache(self_caches, kv, lengths)
        if logits == "all":
            # Query i of a row sits at cache.lengths + i: the T queries are the last T positions
            # of a sequence of cache.lengths + T (padding queries read garbage, ignored).
            all_lengths = cache.lengths + tokens.shape[1]
            h = self.cross_decoder(x, positions, kv.k, kv.v, all_lengths, None, kv.scales)
            return self.logits_all(h), new_cache
        x, positions = last_tokens(x, n_new), lengths[:, None] - 1
        h = self.cross_decoder(x, positions, kv.k, kv.v, lengths, None, kv.scales)
        return self.logits_of(h), new_cache
