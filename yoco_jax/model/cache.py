"""Inference caches as explicit pytrees (NamedTuples): construction, capacity, writing, growth
and size in bytes (saving and loading them: inference/cache_io.py).

YOCO keeps, per self-decoder layer, a float32 retention state (or a window-sized ring buffer
for sliding-window attention), plus ONE global K/V for the whole cross-decoder. The Transformer
baseline keeps K/V for every layer. `lengths[b]` counts the tokens sequence b has consumed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from yoco_jax.config import ModelConfig


class RetentionState(NamedTuple):
    state: Float[Array, "B H Dk Dv"]  # float32


class WindowKV(NamedTuple):
    """Ring buffer: position p lives in slot p % window."""

    k: Float[Array, "B W H Dh"]
    v: Float[Array, "B W H Dh"]

    def write(
        self,
        k: Float[Array, "B T H Dh"],
        v: Float[Array, "B T H Dh"],
        positions: Int[Array, "B T"],
        valid: Bool[Array, "B T"],
    ) -> WindowKV:
        """The ring after new K/V at `positions` (each row's consecutive, from positions[:, 0];
        padding, valid False, comes last and writes nothing)."""
        window, t = self.k.shape[1], k.shape[1]
        start = positions[:, 0]
        slot_pos = _ring_positions(start + valid.sum(axis=1) - 1, window)
        from_new = (slot_pos >= start[:, None])[..., None, None]
        idx = jnp.clip(slot_pos - start[:, None], 0, t - 1)[..., None, None]
        take = lambda new, old: jnp.where(
            from_new, jnp.take_along_axis(new.astype(old.dtype), idx, axis=1), old
        )
        return WindowKV(take(k, self.k), take(v, self.v))


def _ring_positions(last: Int[Array, " B"], window: int) -> Int[Array, "B W"]:
    """Which position each ring slot holds when `last` is the newest one (negative: empty)."""
    slots = jnp.arange(window)
    return last[:, None] - (last[:, None] - slots) % window


class KVCache(NamedTuple):
    k: Float[Array, "B S Hkv Dh"]
    v: Float[Array, "B S Hkv Dh"]

    def write(
        self,
        k: Float[Array, "B T Hkv Dh"],
        v: Float[Array, "B T Hkv Dh"],
        positions: Int[Array, "B T"],
        valid: Bool[Array, "B T"],
    ) -> KVCache:
        """New K/V written at their positions; padding (valid False) writes nothing."""
        rows = jnp.arange(k.shape[0])[:, None]
        cols = jnp.where(valid, positions, self.k.shape[1])  # out of range -> dropped
        return KVCache(
            self.k.at[rows, cols].set(k.astype(self.k.dtype), mode="drop"),
            self.v.at[rows, cols].set(v.astype(self.v.dtype), mode="drop"),
        )


class YOCOCache(NamedTuple):
    self_layers: tuple  # RetentionState or WindowKV per self-decoder layer
    kv: KVCache  # the single cache read by every cross-decoder layer
    lengths: Int[Array, " B"]

    @property
    def max_len(self) -> int:
        """Positions each sequence can hold (the global K/V's length)."""
        return self.kv.k.shape[1]

    @property
    def kv_dtype(self):
        return self.kv.k.dtype


class TransformerCache(NamedTuple):
    layers: tuple  # KVCache per layer
    lengths: Int[Array, " B"]

    @property
    def max_len(self) -> int:
        """Positions each sequence can hold (every layer's K/V length)."""
        return self.layers[0].k.shape[1]

    @property
    def kv_dtype(self):
        return self.layers[0].k.dtype


Cache = YOCOCache | TransformerCache


def map_kv(cache: Cache, fn) -> Cache:
    """`fn` over every KVCache of a cache (the global or per-layer K/V; not window rings)."""
    if isinstance(cache, YOCOCache):
        return cache._replace(kv=fn(cache.kv))
    return cache._replace(layers=tuple(fn(c) for c in cache.layers))


def resize_cache(cache: Cache, max_len: int) -> Cache:
    """The same cache with every K/V zero-padded, or cut, along time to `max_len` positions (a
    copy). Cutting is refused where it would drop a row's tokens (`cache.lengths`)."""
    used = int(np.max(np.asarray(cache.lengths), initial=0))
    if max_len < used:
        raise ValueError(
            f"cannot resize a cache holding {used} tokens to {max_len} positions: give a "
            f"max_len of at least {used}"
        )
    extra = max_len - cache.max_len
    if extra > 0:
        fit = lambda x: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
    elif extra < 0:
        fit = lambda x: x[:, :max_len]
    else:
        fit = jnp.copy
    # Every leaf new: the result never aliases the caller's arrays (consumers donate it).
    is_kv = lambda x: isinstance(x, KVCache)
    copied = jax.tree.map(lambda x: x if is_kv(x) else jnp.copy(x), cache, is_leaf=is_kv)
    return map_kv(copied, lambda c: KVCache(fit(c.k), fit(c.v)))


def _kv(cfg: ModelConfig, batch: int, length: int, dtype) -> KVCache:
    shape = (batch, length, cfg.n_attn_kv_heads, cfg.attn_head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
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
