"""Pallas kernels under a mesh: a pallas_call cannot be partitioned by XLA, so it runs in
`shard_map` on each device's shard, batch and heads split as the logical rules place
`activation_batch` and `activation_heads` (data/fsdp and tensor by default)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from yoco_jax import sharding


def per_device(kernel, *args):
    """`kernel(q, k, v, *rest)` on each device's shard under the mesh being traced under; a
    plain call without one. q, k, v [B, T, H, Dh]; rest: per-row vectors [B] or [B, T].

    Every head count the parameter rules accept runs: query heads that do not divide the head
    axes are not split (each device computes them all); kv heads that do not divide (2 kv heads
    over tensor=4) arrive whole and each device gathers the ones its query heads read, repeated
    so the local grouping is even. A batch that does not divide is replicated likewise.
    """
    mesh = sharding.tracing()
    if mesh.size == 1:
        return kernel(*args)
    q, k = args[0], args[1]
    batch = mesh.axes("activation_batch", q.shape[0])
    heads = mesh.axes("activation_heads", q.shape[2])
    kv_heads = None if heads is None or k.shape[2] % sharding.axes_size(mesh.mesh, heads) else heads
    q_spec, kv_spec = P(batch, None, heads, None), P(batch, None, kv_heads, None)
    specs = (q_spec, kv_spec, kv_spec) + (P(batch),) * (len(args) - 3)
    if heads is not None and kv_heads is None:
        n = sharding.axes_size(mesh.mesh, heads)
        kernel = _with_local_kv_heads(kernel, heads, n, k.shape[2])
    return jax.shard_map(kernel, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


def _with_local_kv_heads(kernel, axes, n: int, hkv: int):
    """Wraps `kernel` to take all `hkv` kv heads and keep the ones this device's query heads read.

    Query heads split n ways read kv heads repeated r = n / gcd(hkv, n) times (hkv * r heads,
    which n divides and which divide the query heads): device i keeps repeated heads
    [i m, (i + 1) m), m = hkv r / n, that is original heads (i m + j) // r. Gradients flow back
    through the gather and shard_map sums them over `axes`.
    """
    r = n // math.gcd(hkv, n)
    m = hkv * r // n

    def local(q, k, v, *rest):
        index = (jax.lax.axis_index(axes) * m + jnp.arange(m)) // r
        return kernel(q, jnp.take(k, index, axis=2), jnp.take(v, index, axis=2), *rest)

    return local
