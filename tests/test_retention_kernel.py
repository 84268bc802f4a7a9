"""The Pallas retention kernel (GPU semantics, interpreted) computes what the XLA forms compute:
outputs and final state, with an incoming state, awkward sizes and strong gates; and the model
with retention_impl=pallas matches retention_impl=xla (logits, prefill cache, gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoco_jax.kernels.retention_gpu import retention_forward
from yoco_jax.ops import retention

GATES = {"weak": (0.0, 0.05), "strong": (0.5, 3.0)}  # -log(gamma) per step


def inputs(t, gates="weak", seed=0, b=2, h=3, dk=8, dv=6, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, t, h, dk), dtype)
    k = jax.random.normal(ks[1], (b, t, h, dk), dtype)
    v = jax.random.normal(ks[2], (b, t, h, dv), dtype)
    low, high = GATES[gates]
    log_gate = -jax.random.uniform(ks[3], (b, t, h), minval=low, maxval=high)
    state = jax.random.normal(ks[4], (b, h, dk, dv))
    return q, k, v, log_gate, state


@jax.jit
def token_by_token(q, k, v, log_gate, state):
    """The definition, one token at a time:
    S = gamma S + (k / sqrt(dk))^T v, o = q S."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    k = k * k.shape[-1] ** -0.5

    def step(s, xs):
        qt, kt, vt, gt = xs
        s = jnp.exp(gt)[..., None, None] * s + kt[..., :, None] * vt[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", qt, s, precision="highest")

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_gate))
    state, out = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out, 0, 1), state


@functools.partial(jax.jit, static_argnames=("chunk_size", "block_v"))
def kernel(q, k, v, log_gate, state, chunk_size, block_v=64):
    return retention_forward(
        q, k, v, log_gate, state, chunk_size=chunk_size, block_v=block_v, interpret=True
    )


def rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "t, chunk, gates, dk, dv, block_v",
    [
        (45, 16, "strong", 8, 6, 64),  # T not a multiple of C; Dk, Dv padded to 16
        (45, 16, "weak", 16, 40, 16),  # three programs over the value columns (40 -> 48 -> 64)
        (7, 64, "weak", 32, 16, 64),  # T < C: one short chunk
        (64, 16, "strong", 16, 16, 16),  # T a multiple of C, no padding at all
    ],
)
def test_kernel_equals_the_definition_and_xla_in_float32(t, chunk, gates, dk, dv, block_v):
    q, k, v, g, s0 = inputs(t, gates, seed=t + dk, dk=dk, dv=dv)
    out, state = kernel(q, k, v, g, s0, chunk, block_v)
    want_out, want_state = token_by_token(q, k, v, g, s0)
    assert rel(out, want_out) < 1e-5 and rel(state, want_state) < 1e-5
    xla_out, xla_state = retention.chunkwise_retention(q, k, v, g, chunk, s0)
    assert rel(out, xla_out) < 1e-5 and rel(state, xla_state) < 1e-5
    assert out.dtype == jnp.float32 and state.dtype == jnp.float32


def test_kernel_without_a_state_equals_the_parallel_form():
    q, k, v, g, _ = inputs(45, "weak", seed=5)
    out, state = kernel(q, k, v, g, None, 16)
    assert rel(out, retention.parallel_retention(q, k, v, g)) < 1e-5
    assert rel(state, token_by_token(q, k, v, g, jnp.zeros_like(state))[1]) < 1e-5


def test_kernel_in_bfloat16_matches_xla_within_its_rounding():
    """bfloat16 operands (decayed scores, decayed keys, the state read by q) vs XLA's float32."""
    q, k, v, g, s0 = inputs(45, "weak", seed=6, dk=16, dv=32, dtype=jnp.bfloat16)
    out, state = kernel(q, k, v, g, s0, 16)
    xla_out, xla_state = retention.chunkwise_retention(q, k, v, g, 16, s0)
    assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
    assert rel(out, xla_out) < 1e-2 and rel(state, xla_state) < 5e-3


def test_two_pieces_with_the_state_equal_one_pass():
    """Chunked prefill: the state out of the first piece continues the second exactly."""
    q, k, v, g, s0 = inputs(40, "weak", seed=7)
    whole, whole_state = kernel(q, k, v, g, s0, 16)
    first, state = kernel(q[:, :21], k[:, :21], v[:, :21], g[:, :21], s0, 16)
    second, state = kernel(q[:, 21:], k[:, 21:], v[:, 21:], g[:, 21:], state, 16)
    assert rel(jnp.concatenate([first, second], 1), whole) < 1e-5
    assert rel(state, whole_state) < 1e-5


def test_bad_shapes_are_named():
    q, k, v, g, s0 = inputs(8)
    with pytest.raises(ValueError, match="log_gate"):
        retention_forward(q, k, v, g[..., :2], interpret=True)
    with pytest.raises(ValueError, match="state"):
        retention_forward(q, k, v, g, s0[:, :, :4], interpret=True)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernel_lowers_for_cuda(dtype):
    """Triton lowering on CPU (no GPU needed): block shapes, dots and loads are accepted."""
    shape = lambda *s, dt=dtype: jax.ShapeDtypeStruct(s, dt)
    fn = lambda *args: retention_forward(*args, interpret=False)
    args = (shape(1, 200, 3, 128), shape(1, 200, 3, 128), shape(1, 200, 3, 96))
    args += (shape(1, 200, 3, dt=jnp.float32), shape(1, 3, 128, 96, dt=jnp.float32))
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    assert "retention_fwd" in lowered.as_text()
