"""The three forms of gated retention compute the same function, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoco_jax.ops import retention

# Jitted once per shape: eager mode would compile every primitive separately.
parallel_retention = jax.jit(retention.parallel_retention)
chunkwise_retention = jax.jit(retention.chunkwise_retention, static_argnums=4)
recurrent_retention = retention.recurrent_retention


GATES = {"weak": (0.0, 0.05), "strong": (0.5, 3.0)}  # -log(gamma) per step


def inputs(t, gates="weak", seed=0, b=2, h=3, dk=8, dv=6):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, t, h, dk))
    k = jax.random.normal(ks[1], (b, t, h, dk))
    v = jax.random.normal(ks[2], (b, t, h, dv))
    low, high = GATES[gates]
    log_gate = -jax.random.uniform(ks[3], (b, t, h), minval=low, maxval=high)
    return q, k, v, log_gate


@jax.jit
def recurrent_loop(q, k, v, log_gate):
    """Token by token with the decode step."""
    b, t, h, dk = q.shape

    def step(state, xs):
        o, state = recurrent_retention(*xs, state)
        return state, o

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_gate))
    state, outs = jax.lax.scan(step, jnp.zeros((b, h, dk, v.shape[-1])), xs)
    return jnp.moveaxis(outs, 0, 1), state


@pytest.mark.parametrize("t,chunk", [(1, 4), (7, 4), (13, 5), (16, 4), (33, 8)])
@pytest.mark.parametrize("gates", sorted(GATES))
def test_forms_agree_forward(t, chunk, gates):
    q, k, v, g = inputs(t, gates)
    ref = parallel_retention(q, k, v, g)
    out, state = chunkwise_retention(q, k, v, g, chunk)
    rec, rec_state = recurrent_loop(q, k, v, g)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rec, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, rec_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_tokens", [0, 12, 16, 1 << 20])  # 1, 3, 4 (padded), all chunks
def test_chunk_groups_agree_with_the_recurrence(group_tokens):
    """The accelerators batch chunks in groups (CPU runs one chunk per group): any grouping, with
    a state coming in and T that fills neither chunks nor groups, gives the same outputs, final
    state and gradients."""
    q, k, v, g = inputs(45, "weak", seed=4)
    s0 = jax.random.normal(jax.random.key(5), (2, 3, 8, 6))
    run = jax.jit(lambda *a: retention.chunkwise_retention(*a, 4, s0, group_tokens))
    out, state = run(q, k, v, g)
    rec, rec_state = recurrent_loop(q, k, v, g)
    decay = jnp.exp(jnp.cumsum(g, axis=1))  # s0's contribution, carried by the gates
    want = rec + jnp.einsum("bthk,bhkv->bthv", q * decay[..., None], s0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    want_state = rec_state + jnp.exp(jnp.sum(g, axis=1))[..., None, None] * s0
    np.testing.assert_allclose(state, want_state, rtol=1e-5, atol=1e-5)
    w = jax.random.normal(jax.random.key(9), v.shape)
    grads = jax.grad(lambda *a: jnp.sum(run(*a)[0] * w), argnums=(0, 1, 2, 3))(q, k, v, g)
    one = jax.jit(lambda *a: retention.chunkwise_retention(*a, 4, s0, 0))
    want_grads = jax.grad(lambda *a: jnp.sum(one(*a)[0] * w), argnums=(0, 1, 2, 3))(q, k, v, g)
    for a, b in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_chunkwise_continues_from_a_state():
    """Prefill in two pieces (carrying the state) equals one pass: chunked prefill relies on it."""
    q, k, v, g = inputs(23, "strong", seed=3)
    whole, whole_state = chunkwise_retention(q, k, v, g, 4)
    first, state = chunkwise_retention(q[:, :10], k[:, :10], v[:, :10], g[:, :10], 4)
    second, state = chunkwise_retention(q[:, 10:], k[:, 10:], v[:, 10:], g[:, 10:], 4, state)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, whole_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gates", sorted(GATES))
def test_forms_agree_gradient(gates):
    q, k, v, g = inputs(11, gates, seed=1)
    w = jax.random.normal(jax.random.key(9), v.shape)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
    ref = jax.grad(loss(parallel_retention), argnums=(0, 1, 2, 3))(q, k, v, g)
    chunked = jax.grad(loss(lambda *a: chunkwise_retention(*a, 4)[0]), argnums=(0, 1, 2, 3))(
        q, k, v, g
    )
    for a, b in zip(chunked, ref):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_accumulate_in_float32():
    q, k, v, g = inputs(40, "weak", seed=2)
    ref = parallel_retention(q, k, v, g)
    bf = lambda x: x.astype(jnp.bfloat16)
    out, state = chunkwise_retention(bf(q), bf(k), bf(v), g, 8)
    assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
    np.testing.assert_allclose(out.astype(jnp.float32), ref, rtol=0.05, atol=0.05)


def test_chunkwise_memory_does_not_grow_quadratically():
    """The compiled chunkwise form keeps no T x T buffer: its temp memory is linear in T."""

    def temp_bytes(t):
        q, k, v, g = (jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs(1))
        shapes = [jax.ShapeDtypeStruct((2, t, *x.shape[2:]), x.dtype) for x in (q, k, v, g)]
        fn = jax.jit(lambda *a: chunkwise_retention(*a, 16)[0])
        return fn.lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    small, big = temp_bytes(1024), temp_bytes(8192)
    assert big < 8 * small * 1.5, (small, big)  # quadratic would be 64x


def numpy_recurrence(q, k, v, log_gate):
    """float64 S_t = gamma_t S_{t-1} + (k_t / sqrt(dk))^T v_t, o_t = q_t S_t -> (outputs, S_T)."""
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, log_gate))
    b, t, h, dk = q.shape
    state = np.zeros((b, h, dk, v.shape[-1]))
    outs = []
    for i in range(t):
        kv = np.einsum("bhk,bhv->bhkv", k[:, i] / np.sqrt(dk), v[:, i])
        state = np.exp(g[:, i])[..., None, None] * state + kv
        outs.append(np.einsum("bhk,bhkv->bhv", q[:, i], state))
    return np.stack(outs, 1), state


def test_bfloat16_forms_agree_tightly_with_a_float64_recurrence():
    """bfloat16 inputs are exact in float32: every form must then agree with a float64
    recurrence to float32 rounding. dk=24 makes the key scale inexact in bfloat16 (issue 15).
    v is float32 so that the outputs (cast to v's dtype) show the float32 result."""
    q, k, v, g = inputs(50, "weak", seed=4, dk=24, dv=16)
    q, k = q.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    v_bf = v.astype(jnp.bfloat16)
    ref_out, _ = numpy_recurrence(q, k, v, g)
    _, ref_state = numpy_recurrence(q, k, v_bf, g)
    err = lambda got, want: np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
    out, _ = chunkwise_retention(q, k, v, g, 16)
    _, state = chunkwise_retention(q, k, v_bf, g, 16)
    rec, rec_state = recurrent_loop(q, k, v_bf, g)
    assert err(out, ref_out) < 1e-5
    assert err(parallel_retention(q, k, v, g), ref_out) < 1e-5
    assert err(state, ref_state) < 1e-5
    assert err(rec_state, ref_state) < 1e-5
