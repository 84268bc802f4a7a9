"""Ring attention for the cross-decoder: its K/V stay split over the `context` axis.

The other form (yoco_jax.ops.context_parallel.gather_kv) all-gathers the one global K/V once per
step, a copy of [B, T, Hkv, Dh] x 2 on every device; `choose` picks ring attention when that copy
would not fit (`GATHER_LIMIT_BYTES`). Here each device keeps its slice of K/V and every cross
layer passes the slices around the ring (`lax.ppermute` to the next device, n - 1 hops): at each
hop the local queries attend to the block they hold, and the partial results are merged by an
online softmax (running log-sum-exp, float32). Positions travel with the blocks, so the causal
mask is by global position and any layout works; in the zig-zag one (queries and K/V both
balanced, as `gather_kv` leaves them) every hop costs each device the same, and each half of the
local queries skips the key blocks wholly in its future (yoco_jax.ops.blocked_attention,
ops/zigzag.py).

Backward: a custom VJP, flash-style. The forward saves only the local q, K/V slice, output and
log-sum-exp; the backward passes the K/V blocks around the ring again with float32 dK/dV
accumulators beside them, adds each device's share at each hop (the blocked attention's backward
against the global log-sum-exp), and one last hop brings the accumulators home. Autodiff of the
ppermute loop would instead keep every received block for the backward: the whole gathered
K/V per layer, the memory this form exists to avoid. Merges and accumulators are float32;
in bfloat16 each hop's partial output and gradients are rounded once before they are added.

Shapes: q [B, Tq, Hq, Dh] and positions [B, Tq]; k, v [B, Tk, Hkv, Dh] and kv_positions [B, Tk],
all split along their length over the axis (query head h reads kv head h // (Hq // Hkv)).
Packed documents: the keys' segment ids travel with the blocks like their positions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from yoco_jax import sharding
from yoco_jax.ops.blocked_attention import backward, forward_with_lse
from yoco_jax.ops.zigzag import half_block_keys, halves
from yoco_jax.sharding import CONTEXT_AXIS as AXIS

f32 = jnp.float32
# The gathered K/V (and, in the backward, its gradient of the same size) live from the K/V
# projection to the last cross layer's backward. At 1 GiB per device that is 2 GiB: a few
# percent of an 80 GB accelerator, 1/8 of a 16 GB one (yoco-3b, bf16: 256K tokens per device's
# rows). Below it gathering wins: ONE all-gather per step where the ring moves the same bytes in
# every one of the L/2 cross layers. A constant rather than a share of the device's memory, so
# that every process traces the same program and the choice is the same on every machine.
GATHER_LIMIT_BYTES = 2**30
MODES = ("auto", "gather", "ring")


def gathered_bytes(shape: tuple[int, ...], itemsize: int, mesh=None) -> int:
    """Bytes of one device's gathered K and V, from K's global shape [B, T, Hkv, Dh]: the batch
    is split over `data` x `fsdp` and the kv heads over `tensor` where they divide."""
    mesh = sharding.tracing().mesh if mesh is None else mesh
    sizes = {} if mesh.empty else dict(mesh.shape)
    b, t, h, d = shape
    rows = math.prod(sizes.get(a, 1) for a in sharding.BATCH_AXES)
    heads = sizes.get("tensor", 1)
    b, h = (b // rows if b % rows == 0 else b), (h // heads if h % heads == 0 else h)
    return 2 * b * t * h * d * itemsize


def choose(mode: str, shape: tuple[int, ...], itemsize: int, mesh=None) -> str:
    """Which form `mode` (a Runtime.context_attention) runs, "gather" or "ring": auto gathers
    when `gathered_bytes` is at most GATHER_LIMIT_BYTES."""
    if mode not in MODES:
        raise ValueError(f"context_attention={mode!r} is not valid; choose one of {MODES}")
    if mode != "auto":
        return mode
    return "gather" if gathered_bytes(shape, itemsize, mesh) <= GATHER_LIMIT_BYTES else "ring"


def _halves(seg, kv_seg, s):
    """The packed-document segments of the query half s, or None."""
    return None if seg is None else (seg[:, s], kv_seg)


def _attend(q, pos, seg, k, v, kv_pos, kv_seg):
    """Local queries against one block: (output [B, Tq, Hq, Dh], its log-sum-exp [B, Hkv, G, Tq]
    float32, -inf where a query sees no key of the block)."""
    bk, t = half_block_keys(q.shape[1]), q.shape[1]
    parts = [
        forward_with_lse(q[:, s], k, v, pos[:, s], kv_pos, None, bk, _halves(seg, kv_seg, s))
        for s in halves(t)
    ]
    out = jnp.concatenate([o for o, _ in parts], axis=1)
    lse = jnp.concatenate([lse for _, lse in parts], axis=-1)
    return out, jnp.where(lse == jnp.inf, -jnp.inf, lse)


def _per_query(lse):
    """[B, Hkv, G, Tq] -> [B, Tq, Hq, 1], to scale outputs [B, Tq, Hq, Dh]."""
    b, hkv, g, t = lse.shape
    return lse.transpose(0, 3, 1, 2).reshape(b, t, hkv * g, 1)


def _merge(out, lse, part, part_lse):
    """The online softmax's step: two partial attentions (each normalized over its own keys)
    into one over both, each rescaled by its share exp(lse_part - lse_both)."""
    both = jnp.logaddexp(lse, part_lse)
    safe = jnp.where(both == -jnp.inf, 0.0, both)  # no key yet on either side: weights 0
    scale = lambda x: jnp.exp(_per_query(x - safe))
    return out * scale(lse) + part.astype(f32) * scale(part_lse), both


def _next(x):
    """x sent to the next device of the ring (the last to the first)."""
    n = lax.axis_size(AXIS)
    return lax.ppermute(x, AXIS, [(i, (i + 1) % n) for i in range(n)])


def _forward_ring(q, pos, k, v, kv_pos, seg, kv_seg):
    def hop(_, carry):
        block, out, lse = carry
        sent = jax.tree.map(_next, block)  # in flight while this block is attended
        return (sent, *_merge(out, lse, *_attend(q, pos, seg, *block)))

    # Carries derived from q: varying over the axis (as a loop carry must be), q's sharding.
    out = jnp.zeros_like(q, f32)
    b, t = q.shape[:2]
    lse = out[..., 0].reshape(b, t, k.shape[2], -1).transpose(0, 2, 3, 1) - jnp.inf
    block = (k, v, kv_pos, kv_seg)
    block, out, lse = lax.fori_loop(0, lax.axis_size(AXIS) - 1, hop, (block, out, lse))
    out, lse = _merge(out, lse, *_attend(q, pos, seg, *block))
    return out.astype(q.dtype), lse


@jax.custom_vjp
def _ring(q, pos, k, v, kv_pos, seg, kv_seg):
    return _forward_ring(q, pos, k, v, kv_pos, seg, kv_seg)[0]


def _ring_fwd(q, pos, k, v, kv_pos, seg, kv_seg):
    out, lse = _forward_ring(q, pos, k, v, kv_pos, seg, kv_seg)
    return out, (q, pos, k, v, kv_pos, seg, kv_seg, out, lse)


def _ring_bwd(saved, d_out):
    q, pos, k, v, kv_pos, seg, kv_seg, out, lse = saved
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)  # the blocked backward's "no key": p = 0
    bk = half_block_keys(q.shape[1])

    def grads(block):
        """This device's queries' share of the gradients: (dq, dk, dv) of the block, float32."""
        kb, vb, pb, sb = block
        dq, dk, dv = [], 0.0, 0.0
        for s in halves(q.shape[1]):
            segments = _halves(seg, sb, s)
            saved = (q[:, s], kb, vb, pos[:, s], pb, out[:, s], lse[..., s], segments)
            g = backward(None, bk, saved, d_out[:, s])
            dq, dk, dv = dq + [g[0].astype(f32)], dk + g[1].astype(f32), dv + g[2].astype(f32)
        return jnp.concatenate(dq, axis=1), dk, dv

    def hop(_, carry):
        block, dkv, dq = carry
        sent = jax.tree.map(_next, block)
        g = grads(block)
        dkv = (dkv[0] + g[1], dkv[1] + g[2])
        return sent, jax.tree.map(_next, dkv), dq + g[0]

    zeros = lambda x: jnp.zeros_like(x, f32)
    carry = ((k, v, kv_pos, kv_seg), (zeros(k), zeros(v)), zeros(q))
    block, (dk, dv), dq = lax.fori_loop(0, lax.axis_size(AXIS) - 1, hop, carry)
    g = grads(block)
    dk, dv = _next(dk + g[1]), _next(dv + g[2])  # the last hop: home, where the block started
    dq = (dq + g[0]).astype(q.dtype)
    return dq, None, dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_cross_attention(
    q: Float[Array, "B T Hq Dh"],
    positions: Int[Array, "B T"],
    k: Float[Array, "B S Hkv Dh"],
    v: Float[Array, "B S Hkv Dh"],
    kv_positions: Int[Array, "B S"],
    segments: tuple[Int[Array, "B T"], Int[Array, "B S"]] | None = None,
) -> Float[Array, "B T Hq Dh"]:
    """Causal attention by global position, everything split along its length over `context`
    (a shard_map manual over that axis only: batch and head sharding pass through);
    `segments`: the queries' and keys' packed-document segment ids, or None."""
    split = P(None, AXIS)
    as_int = lambda x: x.astype(jnp.int32)
    seg, kv_seg = (None, None) if segments is None else map(as_int, segments)
    ring = jax.shard_map(_ring, in_specs=(split,) * 7, out_specs=split, axis_names={AXIS})
    return ring(q, as_int(positions), k, v, as_int(kv_positions), seg, kv_seg)
