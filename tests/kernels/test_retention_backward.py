"""The fused Pallas retention backward (GPU semantics, interpreted) gives the gradients of the XLA
chunkwise form: w.r.t. q, k, v, the log gates and the incoming state, at lengths that are not
multiples of the chunk, several heads and value blocks, strong gates and incoming states."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_retention_kernel import inputs as forward_inputs

from yoco_jax.kernels.retention_gpu import RetentionBlockSizes, retention_forward
from yoco_jax.kernels.retention_gpu_backward import retention_backward
from yoco_jax.ops import retention, retention_kernel


def inputs(t, gates, seed, h=3, dk=8, dv=6, dtype=jnp.float32):
    """test_retention_kernel's primals (q, k, v, log gates, state) and random cotangents."""
    primals = forward_inputs(t, gates, seed, h=h, dk=dk, dv=dv, dtype=dtype)
    ks = jax.random.split(jax.random.key(seed + 1000))
    d_out = jax.random.normal(ks[0], primals[2].shape, dtype)
    return primals, (d_out, jax.random.normal(ks[1], primals[4].shape))


@functools.partial(jax.jit, static_argnums=2)
def xla_grads(primals, cotangents, chunk):
    fn = lambda q, k, v, g, s: retention.chunkwise_retention(q, k, v, g, chunk, s)
    return jax.vjp(fn, *primals)[1](cotangents)


@functools.partial(jax.jit, static_argnames=("chunk", "block_v"))
def kernel_grads(primals, cotangents, chunk, block_v):
    sizes = RetentionBlockSizes(chunk_bwd=chunk, block_v_bwd=block_v)
    _, final = retention_forward(*primals, interpret=True)
    return retention_backward(*primals, final, *cotangents, block_sizes=sizes, interpret=True)


def rel(a, b):
    """Max error relative to the largest expected entry (absolute where all of b is 0)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / (np.abs(b).max() or 1.0))


NAMES = ("dq", "dk", "dv", "d_log_gate", "d_state")


@pytest.mark.parametrize(
    "t, chunk, gates, h, dk, dv, block_v",
    [
        (45, 16, "strong", 3, 8, 6, 64),  # T not a multiple of C; Dk, Dv padded to 16
        (45, 16, "weak", 3, 16, 40, 16),  # Dv 40 -> 64: four value blocks, dq/dk partials summed
        (7, 64, "weak", 2, 32, 16, 16),  # T < C: one short chunk
        (64, 16, "strong", 4, 16, 32, 16),  # T a multiple of C: the last chunk is real
        (50, 16, "weak", 1, 16, 16, 32),  # one head, four chunks, the last one short
    ],
)
def test_backward_kernel_equals_xla_gradients_in_float32(t, chunk, gates, h, dk, dv, block_v):
    primals, cotangents = inputs(t, gates, seed=t + dv, h=h, dk=dk, dv=dv)
    got = kernel_grads(primals, cotangents, chunk, block_v)
    want = xla_grads(primals, cotangents, chunk)
    for name, a, b, x in zip(NAMES, got, want, primals):
        assert a.shape == b.shape == x.shape and a.dtype == x.dtype, name
        assert rel(a, b) < 1e-5, (name, rel(a, b))


def test_backward_with_one_cotangent_at_a_time():
    """Only the outputs' cotangent, then only the final state's (the gates' <dS, S> term)."""
    primals, (d_out, d_state) = inputs(37, "strong", seed=3, dk=16, dv=16)
    for cotangents in [(d_out, jnp.zeros_like(d_state)), (jnp.zeros_like(d_out), d_state)]:
        got = kernel_grads(primals, cotangents, 16, 16)
        for name, a, b in zip(NAMES, got, xla_grads(primals, cotangents, 16)):
            assert rel(a, b) < 1e-5, (name, rel(a, b))


def test_gradients_through_the_pallas_impl_without_a_state():
    """retention_impl=pallas under jax.grad (default tiles, zero incoming state) runs the backward
    kernel and matches XLA's gradients."""
    (q, k, v, g, _), (d_out, d_state) = inputs(45, "weak", seed=4, dk=16, dv=24)

    def loss(impl, q, k, v, g):
        kernel = {"backend": "gpu", "interpret": True} if impl == "pallas" else {}
        out, state = retention_kernel.chunkwise(q, k, v, g, 16, impl=impl, **kernel)
        return jnp.sum(out * d_out) + jnp.sum(state * d_state)

    grad = lambda impl: jax.grad(functools.partial(loss, impl), argnums=range(4))
    jaxpr = str(jax.make_jaxpr(grad("pallas"))(q, k, v, g))
    assert "name=retention_bwd" in jaxpr and "name=retention_fwd" in jaxpr
    for a, b in zip(jax.jit(grad("pallas"))(q, k, v, g), jax.jit(grad("xla"))(q, k, v, g)):
        assert rel(a, b) < 1e-5


def test_backward_in_bfloat16_matches_xla_within_its_rounding():
    primals, cotangents = inputs(45, "weak", seed=6, dk=16, dv=32, dtype=jnp.bfloat16)
    got = kernel_grads(primals, cotangents, 16, 16)
    for name, a, b in zip(NAMES, got, xla_grads(primals, cotangents, 16)):
        assert rel(a, b) < 2e-2, (name, rel(a, b))
    assert got[0].dtype == jnp.bfloat16 and got[4].dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_backward_kernel_lowers_for_cuda(dtype):
    """Triton lowering on CPU (no GPU needed): block shapes, dots, loads and stores are accepted."""
    shape = lambda *s, dt=dtype: jax.ShapeDtypeStruct(s, dt)
    f32 = lambda *s: shape(*s, dt=jnp.float32)
    fn = lambda *args: retention_backward(*args, interpret=False)
    args = (shape(1, 300, 3, 128), shape(1, 300, 3, 128), shape(1, 300, 3, 96), f32(1, 300, 3))
    args += (f32(1, 3, 128, 96), f32(1, 3, 128, 96), shape(1, 300, 3, 96), f32(1, 3, 128, 96))
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    assert "retention_bwd" in lowered.as_text()
