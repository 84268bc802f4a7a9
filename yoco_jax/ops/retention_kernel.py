"""Chunkwise gated retention by XLA or by the Pallas kernel: what `retention_impl` selects.

`impl="xla"` is ops/retention.py's `chunkwise_retention`. `impl="pallas"` runs the Triton
kernels under a custom VJP: the forward (kernels/retention_gpu.py) and the fused backward
(kernels/retention_gpu_backward.py, which recomputes the states from the inputs, so the
residuals are the inputs and the final state). The kernels use their own chunk
(`RetentionBlockSizes`, their tile); `chunk_size` is the XLA form's.

The default stays "xla" everywhere (config.Runtime.retention_impl, and this module decides
nothing by platform) until a GPU measurement shows the kernels win: neither the forward nor the
backward has been timed on a GPU yet (`python -m bench.gpu_perf --out $OUT --groups retention`
measures both against XLA; docs/benchmarks.md, "Still unmeasured"). Where they win, the choice
by platform goes here, in one place, as ops/attention_choice.py does for attention.

Only a GPU kernel exists: backend "tpu" raises (a Mosaic TPU kernel is not written), and off a
GPU the kernel runs interpreted (`interpret` None or True; False raises). Under a mesh the
kernel runs per device in shard_map, batch and heads split as `activation_batch` and
`activation_heads` place them (replicated where they do not divide).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from yoco_jax import sharding
from yoco_jax.kernels.common import resolve_backend
from yoco_jax.kernels.retention_gpu import retention_forward
from yoco_jax.kernels.retention_gpu_backward import retention_backward
from yoco_jax.ops.retention import chunkwise_retention

IMPLS = ("xla", "pallas")


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _kernel_retention(q, k, v, log_gate, state, interpret):
    return retention_forward(q, k, v, log_gate, state, interpret=interpret)


def _kernel_retention_fwd(q, k, v, log_gate, state, interpret):
    out, final = _kernel_retention(q, k, v, log_gate, state, interpret)
    return (out, final), (q, k, v, log_gate, state, final)


def _kernel_retention_bwd(interpret, residuals, cotangents):
    return retention_backward(*residuals, *cotangents, interpret=interpret)


_kernel_retention.defvjp(_kernel_retention_fwd, _kernel_retention_bwd)


def _per_device(kernel, q, k, v, log_gate, state):
    """`kernel` on each device's batch and heads under the mesh being traced under (a
    pallas_call cannot be partitioned by XLA); plain call without a mesh."""
    mesh = sharding.tracing()
    if mesh.size == 1:
        return kernel(q, k, v, log_gate, state)
    batch = mesh.axes("activation_batch", q.shape[0])
    heads = mesh.axes("activation_heads", q.shape[2])
    seq, gates, states = P(batch, None, heads, None), P(batch, None, heads), P(batch, heads)
    specs = dict(in_specs=(seq, seq, seq, gates, states), out_specs=(seq, states))
    return jax.shard_map(kernel, **specs, check_vma=False)(q, k, v, log_gate, state)


def chunkwise(
    q,
    k,
    v,
    log_gate,
    chunk_size: int,
    state=None,
    *,
    starts=None,
    impl: str = "xla",
    backend: str | None = None,
    interpret: bool | None = None,
):
    """`chunkwise_retention`'s signature and result (out `[B, T, H, Dv]`, final state `[B, H,
    Dk, Dv]` float32) by `impl`; `backend`, `interpret`: ModelConfig.kernel_options."""
    if impl not in IMPLS:
        raise ValueError(f"retention impl must be one of {IMPLS}, got {impl!r}.")
    # Packed documents (`starts`) run the XLA form whatever `impl` says: the kernel carries
    # its state through every position (resets in the kernel: not written yet).
    if impl == "xla" or starts is not None:
        return chunkwise_retention(q, k, v, log_gate, chunk_size, state, starts=starts)
    if resolve_backend(backend) != "gpu":
        raise ValueError(
            "retention_impl=pallas has a GPU (Triton) kernel only: set retention_impl=xla on TPU "
            "(or kernel_backend=gpu kernel_interpret=true to interpret the GPU kernel)."
        )
    if interpret is False and jax.default_backend() != "gpu":
        raise ValueError(
            f"retention_impl=pallas with kernel_interpret=false needs a GPU (the default device "
            f"is {jax.default_backend()}): unset kernel_interpret or set retention_impl=xla."
        )
    b, _, h, dk = q.shape
    if state is None:
        state = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)
    kernel = lambda *args: _kernel_retention(*args, interpret)
    return _per_device(kernel, q, k, v, log_gate, state.astype(jnp.float32))
