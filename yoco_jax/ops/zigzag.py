"""The zig-zag layout of a sequence split over the context axis, and its query halves.

Contiguous: device i holds slice i of n. Zig-zag (context_parallel.balance): device i holds the
half slices i and 2n - 1 - i, so every device has as many causal (query, key) pairs. Each half
of a device's local queries attends on its own (the two zig-zag halves lie far apart), so that
each skips the key blocks past its own last position.
"""

from __future__ import annotations

from yoco_jax.ops.blocked_attention import BLOCK_KEYS


def zigzag_half(n: int, i: int, s: int) -> tuple[int, int]:
    """Where the zig-zag layout's half s of device i lives in the contiguous one: half slice
    c (of 2n) is half c % 2 of device c // 2; device i holds half slices i and 2n - 1 - i."""
    return divmod(i if s == 0 else 2 * n - 1 - i, 2)


def contiguous_half(n: int, d: int, s: int) -> tuple[int, int]:
    """The inverse of `zigzag_half`: where half slice 2d + s sits in the zig-zag layout."""
    c = 2 * d + s
    return (c, 0) if c < n else (2 * n - 1 - c, 1)


def halves(t: int) -> list[slice]:
    """The two halves of t local queries (one slice, all of them, when t is odd)."""
    return [slice(None)] if t % 2 else [slice(None, t // 2), slice(t // 2, None)]


def half_block_keys(t: int) -> int:
    """Keys per block of the blocked attention of one half: no coarser than the half, so that
    the skipped blocks are exactly those past its last position."""
    return min(BLOCK_KEYS, t // len(halves(t)))
