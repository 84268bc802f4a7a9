"""The Pallas retention kernel (GPU semantics, interpreted) computes what the XLA forms compute:
outputs and final state, with an incoming state, awkward sizes and strong gates; and the model
with retention_impl=pallas matches retention_impl=xla (logits, prefill cache, gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.errors import ConfigError
from yoco_jax.kernels.retention_gpu import RetentionBlockSizes, retention_forward
from yoco_jax.model import init_cache
from yoco_jax.ops import retention, retention_kernel

KERNEL = {"backend": "gpu", "interpret": True}
# Jitted once per shape: eager mode would compile every primitive separately.
xla_chunkwise = jax.jit(retention.chunkwise_retention, static_argnums=4)
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
    sizes = RetentionBlockSizes(chunk=chunk_size, block_v=block_v)
    return retention_forward(q, k, v, log_gate, state, block_sizes=sizes, interpret=True)


def rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "t, chunk, gates, dk, dv, block_v",
    [
        (45, 16, "strong", 8, 6, 64),  # T not a multiple of C; Dk, Dv padded to 16
        (45, 16, "weak", 16, 40, 16),  # Dv 40 padded to 64: four programs of 16 columns
        (7, 64, "weak", 32, 16, 64),  # T < C: one short chunk
        (64, 16, "strong", 16, 16, 16),  # T a multiple of C, no padding at all
    ],
)
def test_kernel_equals_the_definition_and_xla_in_float32(t, chunk, gates, dk, dv, block_v):
    q, k, v, g, s0 = inputs(t, gates, seed=t + dk, dk=dk, dv=dv)
    out, state = kernel(q, k, v, g, s0, chunk, block_v)
    want_out, want_state = token_by_token(q, k, v, g, s0)
    assert rel(out, want_out) < 1e-5 and rel(state, want_state) < 1e-5
    xla_out, xla_state = xla_chunkwise(q, k, v, g, chunk, s0)
    assert rel(out, xla_out) < 1e-5 and rel(state, xla_state) < 1e-5
    assert out.dtype == jnp.float32 and state.dtype == jnp.float32


def test_kernel_without_a_state_equals_the_parallel_form():
    q, k, v, g, _ = inputs(45, "weak", seed=5)
    out, state = kernel(q, k, v, g, None, 16)
    assert rel(out, jax.jit(retention.parallel_retention)(q, k, v, g)) < 1e-5
    assert rel(state, token_by_token(q, k, v, g, jnp.zeros_like(state))[1]) < 1e-5


def test_kernel_in_bfloat16_matches_xla_within_its_rounding():
    """bfloat16 operands (decayed scores, decayed keys, the state read by q) vs XLA's float32."""
    q, k, v, g, s0 = inputs(45, "weak", seed=6, dk=16, dv=32, dtype=jnp.bfloat16)
    out, state = kernel(q, k, v, g, s0, 16)
    xla_out, xla_state = xla_chunkwise(q, k, v, g, 16, s0)
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
    args = (shape(1, 300, 3, 128), shape(1, 300, 3, 128), shape(1, 300, 3, 96))
    args += (shape(1, 300, 3, dt=jnp.float32), shape(1, 3, 128, 96, dt=jnp.float32))
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    assert "retention_fwd" in lowered.as_text()


# Dispatch: the op's custom VJP and the model under retention_impl ----------------------------


def test_pallas_impl_differentiates_like_xla():
    """Forward and backward by the kernels: gradients of every input equal XLA's
    (tests/kernels/test_retention_backward.py tests the backward kernel at more shapes)."""
    q, k, v, g, s0 = inputs(45, "strong", seed=8, dk=16, dv=24)
    cot_out, cot_state = jax.random.normal(jax.random.key(9), v.shape), jnp.ones_like(s0)

    def grads(impl):
        def loss(*args):
            out, state = retention_kernel.chunkwise(*args[:4], 16, args[4], impl=impl, **KERNEL)
            return jnp.sum(out * cot_out) + jnp.sum(state * cot_state)

        return jax.jit(jax.grad(loss, argnums=range(5)))(q, k, v, g, s0)

    for got, want in zip(grads("pallas"), grads("xla")):
        assert rel(got, want) < 1e-5


def test_pallas_impl_refuses_tpu_and_compiled_cpu():
    q, k, v, g, _ = inputs(8)
    with pytest.raises(ValueError, match="GPU .Triton. kernel only"):
        retention_kernel.chunkwise(q, k, v, g, 4, impl="pallas", backend="tpu")
    with pytest.raises(ValueError, match="kernel_interpret=false needs a GPU"):
        retention_kernel.chunkwise(q, k, v, g, 4, impl="pallas", interpret=False)
    with pytest.raises(ConfigError, match="retention_impl='triton' is not valid"):
        yoco_jax.get_config("yoco-tiny", retention_impl="triton")


def model_outputs(model, tokens, n_new):
    """Logits of the full forward, gradients, and a two-piece prefill (mixed lengths in the
    first piece; the second continues from the retention state): logits and caches."""
    apply = lambda params, *a, **kw: model.module.apply({"params": params}, *a, **kw)
    logits = jax.jit(lambda p: apply(p, tokens))(model.params)
    grads = jax.jit(jax.grad(lambda p: (apply(p, tokens) ** 2).mean()))(model.params)
    extend = jax.jit(lambda p, t, c, n: apply(p, t, c, n, method="extend"))
    cache = init_cache(model.config, tokens.shape[0], 32)
    first, cache = extend(model.params, tokens[:, :11], cache, n_new)
    second, cache = extend(model.params, tokens[:, 11:], cache, None)
    return [logits, first, second, *jax.tree.leaves(cache)], jax.tree.leaves(grads)


@pytest.fixture(scope="module")
def xla_model():
    cfg = yoco_jax.get_config("yoco-tiny", n_layers=2, chunk_size=4, dtype="float32")
    model = yoco_jax.init(cfg, seed=3)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 19)))
    n_new = jnp.asarray([11, 6])
    return model, tokens, n_new, model_outputs(model, tokens, n_new)


def test_model_with_the_pallas_retention_matches_xla(xla_model):
    model, tokens, n_new, (expected, expected_grads) = xla_model
    pallas = model.replace(retention_impl="pallas", kernel_backend="gpu", kernel_interpret=True)
    got, grads = model_outputs(pallas, tokens, n_new)
    jaxpr = str(jax.make_jaxpr(lambda p: pallas.module.apply({"params": p}, tokens))(pallas.params))
    assert jaxpr.count("name=retention_fwd") == 1  # the kernel did run (one retention layer)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert rel(a, b) < 1e-5
    for a, b in zip(grads, expected_grads):
        assert rel(a, b) < 1e-4


def test_model_with_the_pallas_retention_under_a_mesh(xla_model):
    """data x tensor: the kernel runs per device in shard_map (batch and heads split)."""
    from yoco_jax import sharding

    model, tokens, n_new, (expected, _) = xla_model
    pallas = model.replace(retention_impl="pallas", kernel_backend="gpu", kernel_interpret=True)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    with sharding.use_mesh(mesh):
        apply = lambda p, t: pallas.module.apply({"params": p}, t)
        logits = jax.jit(apply)(pallas.params, tokens)
        jaxpr = str(jax.make_jaxpr(apply)(pallas.params, tokens))
    assert "shard_map" in jaxpr and "name=retention_fwd" in jaxpr
    assert rel(logits, expected[0]) < 1e-5
