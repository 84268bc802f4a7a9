"""The Pallas flash kernels as the per-device attention of the context-parallel ops.

`context_parallel.window_attention` and `cross_attention` attend each device's queries (its
slice, or its two zig-zag half slices) to keys that start at a known global position: the slice
with its window halo, or the gathered global K/V. Where `attention_impl` resolves to Pallas
(explicitly, or auto on GPU/TPU), `halves_kernel` gives them a drop-in for their XLA blocked
path: `kernels.flash_attention` with a traced query offset, called once per half, so that key
blocks past a half's last position (or before its window) are skipped by the loop bounds of the
forward and backward kernels. Exact: the same band, float32 softmax statistics.

Positions: the kernels mask by index, so the positions of queries and keys must be contiguous
and the same in every row (as `default_positions` makes them; the unsplit Pallas path assumes
the same). The offsets are read from row 0: key j sits at global position
`kv_pos[0, -1] - (Tk - 1) + j`, and halo slots from before the sequence start (position -1)
fall below `kv_start`.

The shard_map around the kernels must not check varying axes (`check_vma=False`): a pallas_call
result carries no varying-axes type. Inside it, `per_device` splits batch and heads over the
other mesh axes as for the unsplit path.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from yoco_jax.kernels import flash_attention
from yoco_jax.ops import attention_choice
from yoco_jax.ops.per_device import per_device
from yoco_jax.ops.zigzag import halves


def halves_kernel(
    q: Float[Array, "B T Hq Dh"],
    kv_len: int,
    window: int | None = None,
    impl: str = "xla",
    backend: str | None = None,
    interpret: bool | None = None,
):
    """The kernel version of `context_parallel._by_halves`, or None where XLA runs: `impl`
    ("auto" picks per platform; cuDNN, which takes no query offset, gives way to our kernel),
    `backend`, `interpret` as `ModelConfig.kernel_options`. q: the (global) queries."""
    choice = attention_choice.pick(impl, "causal", q, kv_len, window)
    if choice == "xla" or not attention_choice.pallas_fits(q.shape[-1]):
        return None
    return functools.partial(_by_halves, backend=backend, interpret=interpret)


def _by_halves(
    q: Float[Array, "B Tq Hq Dh"],
    pos: Int[Array, "B Tq"],
    k: Float[Array, "B Tk Hkv Dh"],
    v: Float[Array, "B Tk Hkv Dh"],
    kv_pos: Int[Array, "B Tk"],
    window: int | None = None,
    *,
    backend: str | None,
    interpret: bool | None,
) -> Float[Array, "B Tq Hq Dh"]:
    """One device's queries against its keys, each half on its own (the zig-zag halves lie far
    apart); arguments as context_parallel._by_halves."""
    kv_len = k.shape[1]

    def attend(q, k, v, pos, kv_pos):
        first_key = kv_pos[0, -1] - (kv_len - 1)  # global position of key 0
        options = dict(window=window, kv_start=-first_key, backend=backend, interpret=interpret)
        parts = [
            flash_attention(q[:, s], k, v, q_offset=pos[0, s][0] - first_key, **options)
            for s in halves(q.shape[1])
        ]
        return jnp.concatenate(parts, axis=1)

    return per_device(attend, q, k, v, pos, kv_pos)
