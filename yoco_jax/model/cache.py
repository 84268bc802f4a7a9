"""Inference caches as explicit pytrees (NamedTuples), and their size in bytes.

YOCO keeps, per self-decoder layer, a float32 retention state (or a window-sized ring buffer
for sliding-window attention), plus ONE global K/V for the whole cross-decoder. The Transformer
baseline keeps K/V for every layer. `lengths[b]` counts the tokens sequence b has consumed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from yoco_jax.config import ModelConfig


class RetentionState(NamedTuple):
    state: Float[Array, "B H Dk Dv"]  # float32


class WindowKV(NamedTuple):
    """Ring buffer: position p lives in slot p % window."""

    k: Float[Array, "B W H D"]
    v: Float[Array, "B W H D"]


class KVCache(NamedTuple):
    k: Float[Array, "B S Hkv D"]
    v: Float[Array, "B S Hkv D"]


class YOCOCache(NamedTuple):
    self_layers: tuple  # RetentionState or WindowKV per self-decoder layer
    kv: KVCache  # the single cache read by every cross-decoder layer
    lengths: Int[Array, " B"]


class TransformerCache(NamedTuple):
    layers: tuple  # KVCache per layer
    lengths: Int[Array, " B"]


def _kv(cfg: ModelConfig, batch: int, length: int, dtype) -> KVCache:
    shape = (batch, length, cfg.n_attn_kv_heads, cfg.attn_head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None):
    """An empty cache for `batch` sequences of at most `max_len` tokens (K/V in `dtype`)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    lengths = jnp.zeros((batch,), jnp.int32)
    if cfg.arch == "transformer":
        return TransformerCache(
            tuple(_kv(cfg, batch, max_len, dtype) for _ in range(cfg.n_layers)), lengths
        )
    h, d = cfg.n_self_heads, cfg.self_head_dim
    if cfg.sliding_window is not None:
        shape = (batch, cfg.sliding_window, h, d)
        layer = lambda: WindowKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    else:
        layer = lambda: RetentionState(jnp.zeros((batch, h, d, d), jnp.float32))
    return YOCOCache(
        tuple(layer() for _ in range(cfg.half_layers)), _kv(cfg, batch, max_len, dtype), lengths
    )


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> int:
    """Bytes of `init_cache(cfg, batch, max_len, dtype)` by formula, without allocating it."""
    item = jnp.dtype(dtype or cfg.dtype).itemsize
    kv_per_token = 2 * cfg.n_attn_kv_heads * cfg.attn_head_dim * item
    lengths = 4 * batch
    if cfg.arch == "transformer":
        return cfg.n_layers * batch * max_len * kv_per_token + lengths
    h, d = cfg.n_self_heads, cfg.self_head_dim
    if cfg.sliding_window is not None:
        per_layer = 2 * batch * cfg.sliding_window * h * d * item
    else:
        per_layer = batch * h * d * d * 4
    return cfg.half_layers * per_layer + batch * max_len * kv_per_token + lengths


def tree_bytes(tree) -> int:
    """Bytes of a pytree of arrays (or of ShapeDtypeStructs from jax.eval_shape)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
