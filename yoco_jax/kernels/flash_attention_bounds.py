"""The traced query offset and key bounds of the flash kernels (context parallelism).

By default (`cfg.traced` false) the flash kernels use the static bottom-right mask of common.py
and everything here reduces to common.py's functions. With `cfg.traced` they read two int32
scalars, `(q_offset, kv_start)`: query time t sits at key position `q_offset + t`, and only the
keys in `[kv_start, kv_len)` exist (below kv_start: empty slots, such as the part of a window
halo before the sequence start; from kv_len on: padding, which such queries may now reach). A
device's slice of a context-parallel sequence passes the global position of its first query,
so the same causal / window band applies and key blocks outside it are skipped by loop bounds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from yoco_jax.kernels import common
from yoco_jax.kernels.common import Masking


@dataclasses.dataclass(frozen=True)
class Band:
    """Masking with the offset in force, and the first existing key (None: no key bounds)."""

    masking: Masking
    kv_start: jax.Array | None


def band(cfg, q_offset=None, kv_start=None) -> Band:
    """The band of `cfg` (a FlashConfig), with the traced scalars when `cfg.traced`."""
    if not cfg.traced:
        return Band(cfg.masking, None)
    return Band(dataclasses.replace(cfg.masking, offset=q_offset), kv_start)


def tile_mask(bd: Band, row0, key0, block_rows, block_keys):
    """`[block_rows, block_keys]` bool: the rows of the tile that see each key."""
    mask = common.block_mask(row0, key0, block_rows, block_keys, bd.masking)
    if bd.kv_start is None:
        return mask
    keys = key0 + lax.broadcasted_iota(jnp.int32, (block_rows, block_keys), 1)
    return mask & (keys >= bd.kv_start) & (keys < bd.masking.kv_len)


def key_blocks(bd: Band, row0, block_rows, block_keys, num_key_blocks):
    """[first, end) of the key blocks that rows `[row0, row0 + block_rows)` can see."""
    first, end = common.key_block_range(row0, block_rows, block_keys, num_key_blocks, bd.masking)
    if bd.kv_start is None:
        return first, end
    first = jnp.maximum(first, lax.div(bd.kv_start, block_keys))
    end = jnp.minimum(end, -(-bd.masking.kv_len // block_keys))
    return first, jnp.maximum(end, first)


def full_key_blocks(bd: Band, row0, block_rows, block_keys, first, end):
    """[a, b) inside [first, end): the key blocks that need no mask (see common.py)."""
    a, b = common.unmasked_key_blocks(row0, block_rows, block_keys, first, end, bd.masking)
    if bd.kv_start is None:
        return a, b
    a = jnp.clip(lax.div(bd.kv_start + (block_keys - 1), block_keys), a, end)
    # Capped below kv_len (padding needs the mask), but never below a.
    return a, jnp.maximum(jnp.minimum(b, bd.masking.kv_len // block_keys), a)


def row_blocks(bd: Band, key0, block_keys, block_rows, num_row_blocks):
    """[first, end) of the row blocks that can see some key of `[key0, key0 + block_keys)`."""
    first, end = common.row_block_range(key0, block_keys, block_rows, num_row_blocks, bd.masking)
    if bd.kv_start is None:
        return first, end
    outside = (key0 + block_keys <= bd.kv_start) | (key0 >= bd.masking.kv_len)
    # Clamped into [0, num_row_blocks]: a query offset far before the keys sends `first` past it.
    first = jnp.clip(first, 0, num_row_blocks)
    return first, jnp.where(outside, first, jnp.maximum(end, first))
