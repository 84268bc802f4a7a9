"""Pallas kernels under the `context` axis: the flash kernels with a traced query offset and key
start (GPU and TPU semantics, interpret mode) equal a masked reference, and the model split over
the context axis with attention_impl=pallas equals the unsplit XLA model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_context_parallel import _logits_and_grads, _same_model

from yoco_jax import sharding
from yoco_jax.config import get_config, replace_checked
from yoco_jax.kernels import BlockSizes, flash_attention
from yoco_jax.ops.context_kernels import halves_kernel

pytestmark = pytest.mark.slow  # interpreted kernels over context meshes: not in `-m "not slow"`

BLOCKS = BlockSizes(rows=16, keys=16, rows_bwd=16, keys_bwd=32)
WINDOW = 9
# (q_offset, kv_start): offsets not multiples of the blocks, queries reaching past the last key,
# queries before the first key (rows that see nothing), a start that hides a key block and more.
BOUNDS = [(7, 5), (30, 0), (-5, 3), (24, 20)]


def _reference(q, k, v, q_offset, kv_start, window):
    """Masked float32 softmax attention, GQA by repeating K/V; rows with no key give 0."""
    q_pos = q_offset + np.arange(q.shape[1])[:, None]
    k_pos = np.arange(k.shape[1])[None]
    mask = (k_pos <= q_pos) & (k_pos >= kv_start)
    if window is not None:
        mask &= k_pos > q_pos - window
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    weights = jnp.where(mask.any(-1, keepdims=True), weights, 0.0)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


def _value_and_grads(attention, q, k, v, d_out):
    out, vjp = jax.vjp(attention, q, k, v)
    return (out, *vjp(d_out))


@pytest.fixture(scope="module")
def qkv():
    # GQA 2; 21 queries and 45 keys: neither a multiple of the 16 / 32 blocks.
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, 21, 4, 16))
    k = jax.random.normal(keys[1], (2, 45, 2, 16))
    v = jax.random.normal(keys[2], (2, 45, 2, 16))
    return q, k, v, jax.random.normal(keys[3], q.shape)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_flash_attention_with_a_traced_offset_matches_a_masked_reference(qkv, backend):
    """Values and gradients, with and without a window; one compilation for all offsets."""
    q, k, v, d_out = qkv

    @jax.jit
    def kernel(q_offset, kv_start):
        def run(window):
            attention = lambda q, k, v: flash_attention(
                q, k, v, window=window, q_offset=q_offset, kv_start=kv_start, backend=backend,
                interpret=True, block_sizes=BLOCKS,
            )  # fmt: skip
            return _value_and_grads(attention, q, k, v, d_out)

        return run(WINDOW), run(None)

    for q_offset, kv_start in BOUNDS:
        got = kernel(q_offset, kv_start)
        for window, results in zip((WINDOW, None), got):
            reference = functools.partial(
                _reference, q_offset=q_offset, kv_start=kv_start, window=window
            )
            want = _value_and_grads(reference, q, k, v, d_out)
            for name, a, b in zip(("out", "dq", "dk", "dv"), results, want):
                scale = np.max(np.abs(b))
                np.testing.assert_allclose(
                    a, b, atol=1e-5 * scale, err_msg=f"{name} {q_offset} {kv_start} {window}"
                )


@pytest.mark.parametrize("backend,platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_offset_kernels_lower_for_the_real_devices(backend, platform):
    """Triton / Mosaic lowering (on CPU) of the traced-offset forward and backward."""
    q = jax.ShapeDtypeStruct((1, 200, 6, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 300, 2, 128), jnp.bfloat16)

    def fn(q, k, v, q_offset):
        attention = lambda q, k, v: flash_attention(
            q, k, v, window=50, q_offset=q_offset, kv_start=q_offset - 100, backend=backend,
            interpret=False,
        )  # fmt: skip
        return _value_and_grads(attention, q, k, v, q)

    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    jax.jit(fn).trace(q, kv, kv, scalar).lower(lowering_platforms=(platform,))


def test_offsets_need_causal_attention():
    q = jnp.zeros((1, 16, 2, 16))
    with pytest.raises(ValueError, match="q_offset / kv_start need causal=True"):
        flash_attention(q, q, q, causal=False, q_offset=3, interpret=True)


# The model ------------------------------------------------------------------------------------

# yoco-swa-tiny runs both context-parallel attentions: the sliding window (16) of the
# self-decoder reaches back over 2 slices of 10 (and from mid-slice), and the cross-decoder's
# zig-zag halves of 5 queries attend the gathered K/V. Attention heads: 4 over 2 kv heads, dim 16.
CONFIG = get_config("yoco-swa-tiny", n_layers=2, chunk_size=4, dtype="float32")
BATCH = 2


@pytest.fixture(scope="module")
def unsplit():
    return _logits_and_grads(CONFIG, sharding.make_mesh({}, devices=jax.devices()[:1]), BATCH)


# GPU semantics with data 2 (the kernels' per-device shard_map also splits the batch); context 4
# gives zig-zag halves of 5 queries (two kernel calls per layer). TPU semantics on a context-only
# mesh (its interpreter crashes XLA:CPU when a nested shard_map splits a second axis); context 8
# gives odd slices of 5 (one call per layer, no zig-zag) and a window 3 slices deep.
@pytest.mark.parametrize(
    "backend, axes, calls", [("gpu", {"context": 4, "data": 2}, 4), ("tpu", {"context": 8}, 2)]
)
def test_pallas_model_over_the_context_axis_equals_the_unsplit_xla_model(
    unsplit, backend, axes, calls
):
    want_logits, want_grads = unsplit
    pallas = replace_checked(
        CONFIG, attention_impl="pallas", kernel_backend=backend, kernel_interpret=True
    )
    (logits, grads), jaxpr = _logits_and_grads(pallas, sharding.make_mesh(axes), BATCH, jaxpr=True)
    # The kernels did run, in the window layer and in the cross layer.
    name = "flash_attention_fwd" + ("_tpu" if backend == "tpu" else "")
    assert jaxpr.count(f"name={name}") == calls
    _same_model((logits, grads), (want_logits, want_grads))


def test_the_kernels_run_where_the_attention_impl_resolves_to_pallas():
    q = jnp.zeros((1, 8, 4, 16), jnp.bfloat16)
    assert halves_kernel(q, 64, impl="pallas", interpret=True) is not None
    assert halves_kernel(q, 64, impl="xla") is None
    assert halves_kernel(q, 64, impl="auto") is None  # auto on CPU: XLA
    assert halves_kernel(jnp.zeros((1, 8, 4, 12)), 64, impl="pallas") is None  # no Triton tile


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU refusal")
def test_the_gpu_check_refuses_without_a_gpu(capsys):
    from bench import context_kernels_check

    assert context_kernels_check.main() == 2
    assert "no GPU found" in capsys.readouterr().err
