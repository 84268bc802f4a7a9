"""Interleaved (GPT-J) rotary embedding, with the official code's float32 angle table."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


def _torch_linspace(n: int) -> np.ndarray:
    """float32 linspace(0, 1, n) computed as torch does (from both ends), bit for bit.

    At long context the angle is position * inverse frequency, so one ulp in the exponent moves
    the angle by a large fraction of a radian: official checkpoints need the same rounding.
    """
    if n == 1:
        return np.zeros(1, np.float32)
    step = np.float32(1.0) / np.float32(n - 1)
    i = np.arange(n)
    head = np.float32(0.0) + step * i.astype(np.float32)
    tail = np.float32(1.0) - step * (n - 1 - i).astype(np.float32)
    return np.where(i < n // 2, head, tail).astype(np.float32)


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """1 / theta ** linspace(0, 1, head_dim / 2) in float32, `[head_dim / 2]`."""
    return (np.float32(1.0) / np.power(np.float32(theta), _torch_linspace(head_dim // 2))).astype(
        np.float32
    )


def apply_rotary(
    x: Float[Array, "B T H Dh"], positions: Int[Array, "B T"], theta: float
) -> Float[Array, "B T H Dh"]:
    """Rotates pairs (x[2i], x[2i+1]) by angle position * inv_freq[i].

    As the official kernel: cos/sin are rounded to x's dtype, the product is done in float32.
    """
    inv_freq = jnp.asarray(inverse_frequencies(x.shape[-1], theta))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles).astype(x.dtype).astype(jnp.float32)[:, :, None]
    sin = jnp.sin(angles).astype(x.dtype).astype(jnp.float32)[:, :, None]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
