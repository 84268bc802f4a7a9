"""int8 K/V with one float32 scale per token and head (`kv_cache_dtype=int8`).

A vector x `[D]` (one token's key or value in one kv head) is stored as round(x / s) in int8,
s = max|x| / 127 (s = 0 stores zeros; its entries dequantize to 0 whatever s). Rounding to the
nearest integer moves each entry by at most half a step, so the error per entry is bounded by
s / 2 = max|x| / 254 of its own token and head (plus the float32 rounding of x / s and q * s,
~1e-7 relative). Scales are float32: 4 bytes per token and head beside D bytes of int8.

Dequantizing is a multiply, done where the values are read: in the XLA paths (ops/attention.py,
ops/chunked_attention.py) and inside the decode and chunk kernels, one key block at a time, so
the cache is never expanded in memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INT8_MAX = 127


def quantize(x):
    """x `[..., D]` -> (int8 `[..., D]`, float32 scales `[...]`)."""
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=-1) / INT8_MAX
    safe = jnp.where(scale > 0, scale, 1.0)[..., None]
    values = jnp.clip(jnp.round(x / safe), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return values, scale


def dequantize(values, scale, dtype):
    """int8 `[..., D]` and scales `[...]` -> `[..., D]` in `dtype` (the product in float32)."""
    return (values.astype(jnp.float32) * scale[..., None]).astype(dtype)


def dequantize_block(values, scales, dtype, head=None):
    """Inside a kernel: a block of keys or values `[BN, D]` int8 and its scales, `[BN]`, or
    `[BN, Hkv]` with `head` (TPU blocks keep every kv head's scale: a block's last dimension
    must be whole there), whose column `head` is picked by a mask (no dynamic lane index)."""
    if head is None:
        scales = scales[:, None]
    else:
        columns = jax.lax.broadcasted_iota(jnp.int32, scales.shape, 1)
        scales = jnp.sum(jnp.where(columns == head, scales, 0.0), axis=1, keepdims=True)
    return (values.astype(jnp.float32) * scales).astype(dtype)


def check_scales(k_cache, k_scale, v_scale, *, what) -> bool:
    """Whether the kernel call is int8 (both scales given, `[B, S, Hkv]` as the cache)."""
    if k_scale is None and v_scale is None:
        return False
    if k_scale is None or v_scale is None:
        raise ValueError(f"{what}: give both k_scale and v_scale (an int8 cache) or neither.")
    if k_scale.shape != k_cache.shape[:3] or v_scale.shape != k_cache.shape[:3]:
        raise ValueError(
            f"{what}: k_scale {k_scale.shape} and v_scale {v_scale.shape} must be "
            f"{k_cache.shape[:3]} (one scale per token and kv head of the cache)."
        )
    return True
