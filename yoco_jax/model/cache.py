"""Inference caches as explicit pytrees (NamedTuples): construction, capacity, writing, growth
and size in bytes (saving and loading them: inference/cache_io.py).

YOCO keeps, per self-decoder layer, a float32 retention state (or a window-sized ring buffer
for sliding-window attention), plus ONE global K/V for the whole cross-decoder. The Transformer
baseline keeps K/V for every layer. `lengths[b]` counts the tokens sequence b has consumed.
With `kv_cache_dtype=int8` those K/V (not the window rings) are `QuantizedKV`: int8 with a
float32 scale per token and head, quantized when written (kernels/int8.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.kernels.int8 import dequantize, quantize


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
        return KVCache(*_put(self, (k, v), positions, valid))

    @property
    def scales(self) -> tuple[None, None]:
        return None, None


class QuantizedKV(NamedTuple):
    """A KVCache stored in int8, a float32 scale per token and head (`kv_cache_dtype=int8`)."""

    k: Int[Array, "B S Hkv Dh"]  # int8
    v: Int[Array, "B S Hkv Dh"]
    k_scale: Float[Array, "B S Hkv"]  # float32
    v_scale: Float[Array, "B S Hkv"]

    def write(self, k, v, positions, valid) -> QuantizedKV:
        """`KVCache.write`, the new K/V quantized (kernels/int8.py)."""
        (k, k_scale), (v, v_scale) = quantize(k), quantize(v)
        return QuantizedKV(*_put(self, (k, v, k_scale, v_scale), positions, valid))

    @property
    def scales(self) -> tuple[Array, Array]:
        """(k_scale, v_scale): what the attention paths take beside the int8 K/V."""
        return self.k_scale, self.v_scale


def _put(arrays, new, positions, valid) -> list:
    """Each of `new` `[B, T, ...]` into the same-named cache array `[B, S, ...]` at positions."""
    rows = jnp.arange(positions.shape[0])[:, None]
    cols = jnp.where(valid, positions, arrays[0].shape[1])  # out of range -> dropped
    return [a.at[rows, cols].set(x.astype(a.dtype), mode="drop") for a, x in zip(arrays, new)]


def convert_kv(kv: KVCache | QuantizedKV, dtype) -> KVCache | QuantizedKV:
    """The same K/V stored in `dtype` ("int8": quantized; a float dtype: dequantized or cast)."""
    if jnp.dtype(dtype) == jnp.int8:
        if isinstance(kv, QuantizedKV):
            return kv
        (k, k_scale), (v, v_scale) = quantize(kv.k), quantize(kv.v)
        return QuantizedKV(k, v, k_scale, v_scale)
    if isinstance(kv, QuantizedKV):
        return KVCache(dequantize(kv.k, kv.k_scale, dtype), dequantize(kv.v, kv.v_scale, dtype))
    return KVCache(kv.k.astype(dtype), kv.v.astype(dtype))


class YOCOCache(NamedTuple):
    self_layers: tuple  # RetentionState or WindowKV per self-decoder layer
    kv: KVCache | QuantizedKV  # the single cache read by every cross-decoder layer
    lengths: Int[Array, " B"]

    @property
    def max_len(self) -> int:
        """Positions each sequence can hold (the global K/V's length)."""
        return self.kv.k.shape[1]

    @property
    def kv_dtype(self):
        return self.kv.k.dtype


class TransformerCache(NamedTuple):
    layers: tuple  # KVCache (or QuantizedKV) per layer
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
    """`fn` over every KVCache or QuantizedKV of a cache (the global or per-layer K/V; not
    window rings)."""
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
    is_kv = lambda x: isinstance(x, KVCache | QuantizedKV)
    copied = jax.tree.map(lambda x: x if is_kv(x) else jnp.copy(x), cache, is_leaf=is_kv)
    return map_kv(copied, lambda c: type(c)(*map(fit, c)))


def _kv(cfg: ModelConfig, batch: int, length: int, dtype) -> KVCache | QuantizedKV:
    shape = (batch, length, cfg.n_attn_kv_heads, cfg.attn_head_dim)
    if dtype == jnp.int8:  # four arrays, none shared: a consumer donates each leaf
        scale = lambda: jnp.zeros(shape[:3], jnp.float32)
        return QuantizedKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), scale(), scale())
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def kv_cache_dtype(cfg: ModelConfig) -> str:
    """The dtype the cached K/V are stored in: `kv_cache_dtype` if set, else the compute dtype."""
    return cfg.kv_cache_dtype or cfg.dtype


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
    """An empty cache for `batch` sequences of at most `max_len` tokens (K/V in `dtype`, default
    `kv_cache_dtype(cfg)`; "int8": QuantizedKV, window rings then in the compute dtype)."""
    dtype = jnp.dtype(dtype or kv_cache_dtype(cfg))
    lengths = jnp.zeros((batch,), jnp.int32)
    if cfg.arch == "transformer":
        return TransformerCache(
            tuple(_kv(cfg, batch, max_len, dtype) for _ in range(cfg.n_layers)), lengths
        )
    kv = _kv(cfg, batch, max_len, dtype)
    dtype = jnp.dtype(cfg.dtype) if dtype == jnp.int8 else dtype
    h, d = cfg.n_self_heads, cfg.self_head_dim
    if cfg.sliding_window is not None:
        shape = (batch, cfg.sliding_window, h, d)
        layer = lambda: WindowKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    else:
        layer = lambda: RetentionState(jnp.zeros((batch, h, d, d), jnp.float32))
    return YOCOCache(tuple(layer() for _ in range(cfg.half_layers)), kv, lengths)


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> int:
    """Bytes of `init_cache(cfg, batch, max_len, dtype)` by formula, without allocating it."""
    dtype = jnp.dtype(dtype or kv_cache_dtype(cfg))
    item = dtype.itemsize
    kv_per_token = 2 * cfg.n_attn_kv_heads * cfg.attn_head_dim * item
    if dtype == jnp.int8:  # plus a float32 scale per token and head, K and V
        kv_per_token += 2 * cfg.n_attn_kv_heads * 4
        item = jnp.dtype(cfg.dtype).itemsize  # the window rings
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
