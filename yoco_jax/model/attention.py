"""Softmax-attention mixers: sliding-window (YOCO-SWA self-decoder), cross-attention (YOCO
cross-decoder) and full causal self-attention (the Transformer baseline). Each projects, says
which keys its queries see, and calls the one attention address (ops/attention.py)."""

from __future__ import annotations

import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Bool, Float, Int, Shaped

from yoco_jax.config import ModelConfig
from yoco_jax.model.cache import KVCache, QuantizedKV, WindowKV
from yoco_jax.model.layers import Linear, project_qkv
from yoco_jax.model.rotary import apply_rotary
from yoco_jax.ops.attention import attend, cached, causal, gathered
from yoco_jax.ops.chunked_attention import window_context


def _dense(cfg: ModelConfig, features: int, axes: tuple[str, str], name: str) -> Linear:
    return Linear(features, axes, cfg.dtype, cfg.param_dtype, name=name)


class SlidingWindowAttention(nn.Module):
    """Each token attends to the last `sliding_window` tokens, itself included."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        cache: WindowKV | None = None,
        valid: Bool[Array, "B T"] | None = None,
        segment_ids: Int[Array, "B T"] | None = None,
        fresh: bool = False,
    ) -> tuple[Float[Array, "B T D"], WindowKV | None]:
        cfg = self.config
        b, t, dim = x.shape
        h, d, w = cfg.n_self_heads, cfg.self_head_dim, cfg.sliding_window
        q, k, v = project_qkv(cfg, x, positions, h, h, d)

        new_cache = None
        if cache is None or fresh:
            o = attend(q, k, v, causal(positions, w, segment_ids), cfg)
        else:
            # Ring + chunk laid out in position order: the chunk-vs-cache path (padding keys
            # sit after every real query, so causality hides them).
            keys, values, lengths = window_context(cache.k, cache.v, k, v, positions[:, 0])
            o = attend(q, keys, values, cached(lengths, w), cfg)
        if cache is not None:
            new_cache = cache.write(k, v, positions, valid)
        o = checkpoint_name(o.reshape(b, t, dim), "mixer_out")  # a remat name (model/block.py)
        out = _dense(cfg, dim, ("heads", "embed"), "out_proj")(o)
        return out, new_cache


class CrossAttention(nn.Module):
    """Queries (own projection, rotary) attend causally to the cross-decoder's global K/V."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        k: Shaped[Array, "*n B S Hkv Dh"],
        v: Shaped[Array, "*n B S Hkv Dh"],
        lengths: Int[Array, " B"] | None = None,
        kv_positions: Int[Array, "*n B S"] | None = None,
        k_scale: Float[Array, "B S Hkv"] | None = None,
        v_scale: Float[Array, "B S Hkv"] | None = None,
        segments: tuple[Int[Array, "B T"], Int[Array, "*n B S"]] | None = None,
    ) -> tuple[Float[Array, "B T D"], None]:
        """Without `lengths`, T == S (training); with it, x holds each sequence's last T tokens.
        `kv_positions` (from `context_parallel.gather_kv`): x is split over the context axis and
        k, v are whole, one copy per device stacked in front ([n, B, S, Hkv, Dh]).
        `k_scale`, `v_scale`: k, v are an int8 cache (model/cache.py QuantizedKV).
        `segments`: packed documents, the queries' and keys' segment ids (without `lengths`)."""
        cfg = self.config
        b, t, dim = x.shape
        q = _dense(cfg, dim, ("embed", "heads"), "q_proj")(x)
        q = apply_rotary(
            q.reshape(b, t, cfg.n_attn_heads, cfg.attn_head_dim), positions, cfg.rope_theta
        )
        q = checkpoint_name(q, "qkv")
        if kv_positions is not None:
            visibility = gathered(positions, kv_positions, segments)
        elif lengths is None:
            visibility = causal(positions, segment_ids=None if segments is None else segments[0])
        else:
            visibility = cached(lengths)
        o = attend(q, k, v, visibility, cfg, k_scale=k_scale, v_scale=v_scale)
        o = checkpoint_name(o.reshape(b, t, dim), "mixer_out")
        return _dense(cfg, dim, ("heads", "embed"), "out_proj")(o), None


class SelfAttention(nn.Module):
    """Llama-style causal GQA self-attention with a per-layer KV cache (the baseline)."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        cache: KVCache | QuantizedKV | None = None,
        valid: Bool[Array, "B T"] | None = None,
        segment_ids: Int[Array, "B T"] | None = None,
        fresh: bool = False,
    ) -> tuple[Float[Array, "B T D"], KVCache | QuantizedKV | None]:
        cfg = self.config
        b, t, dim = x.shape
        heads, kv_heads, d = cfg.n_attn_heads, cfg.n_attn_kv_heads, cfg.attn_head_dim
        q, k, v = project_qkv(cfg, x, positions, heads, kv_heads, d)
        new_cache = None
        if cache is not None:
            new_cache = cache.write(k, v, positions, valid)
        if cache is None or fresh:
            o = attend(q, k, v, causal(positions, segment_ids=segment_ids), cfg)
        else:
            k_scale, v_scale = new_cache.scales
            visibility = cached(positions[:, 0] + t)
            o = attend(
                q, new_cache.k, new_cache.v, visibility, cfg, k_scale=k_scale, v_scale=v_scale
            )
        o = checkpoint_name(o.reshape(b, t, dim), "mixer_out")
        return _dense(cfg, dim, ("heads", "embed"), "out_proj")(o), new_cache
