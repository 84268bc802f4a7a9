"""Ring attention (the cross-decoder's K/V kept split over the context axis) equals the gathered
form and plain masked attention, values and gradients; the model under `context_attention=ring`
equals the unsplit model; `auto` picks by the gathered K/V's size."""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec
from test_context_parallel import CONFIGS, _logits_and_grads, _same_model

from yoco_jax import sharding
from yoco_jax.config import ConfigError
from yoco_jax.ops import context_parallel as cp
from yoco_jax.ops import ring_attention
from yoco_jax.ops.masked_attention import masked_attention, position_mask

pytestmark = pytest.mark.slow  # meshes of 8 CPU devices: not in `-m "not slow"`

B, T, HQ, HKV, D = 2, 48, 4, 2, 8  # GQA 2; slices of 24, 12 or 6 (half slices of 3 at n = 8)


def _case(sharp=1.0):
    rng = np.random.default_rng(0)
    q, w = (jnp.asarray(rng.normal(size=(B, T, HQ, D)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(B, T, HKV, D)), jnp.float32) for _ in range(2))
    pos = jnp.asarray([np.arange(T), np.arange(T) + 5], jnp.int32)  # rows at other offsets
    return q * sharp, k, v, w, pos


def _with_grads(attention, q, k, v, w):
    """(attention(q, k, v), the gradients of sum(w * it) with respect to q, k, v)."""
    out, vjp = jax.vjp(attention, q, k, v)
    return out, vjp(w)


def _reference(q, k, v, w, pos):
    """Plain masked attention on one device."""
    attention = lambda q, k, v: masked_attention(q, k, v, position_mask(pos, pos))
    return _with_grads(attention, q, k, v, w)


def _split(n, q, k, v, w, pos, mode, layout):
    """The same loss with the sequence split n ways: K/V from `gather_kv` (gathered, or for the
    ring left split and zig-zag when it can be), queries contiguous or zig-zag (`layout`)."""
    mesh = sharding.make_mesh({"context": n, "data": -1})
    put = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "context")))

    def attention(q, k, v):
        if layout == "contiguous" and mode == "ring":  # the ring on contiguous K/V as they are
            return ring_attention.ring_cross_attention(q, pos, k, v, pos)
        if layout == "mixed":  # zig-zag queries against contiguous K/V blocks
            out = ring_attention.ring_cross_attention(cp.balance(q), cp.balance(pos), k, v, pos)
            return cp.unbalance(out)
        kv = cp.gather_kv(k, v, pos, mode)
        if layout == "contiguous":
            return cp.cross_attention(q, pos, *kv)
        return cp.unbalance(cp.cross_attention(cp.balance(q), cp.balance(pos), *kv))

    with sharding.use_mesh(mesh):
        return jax.jit(partial(_with_grads, attention))(*map(put, (q, k, v)), w)


def _assert_equal(got, want):
    for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, x, rtol=1e-5, atol=1e-5 * np.max(np.abs(x)))


@pytest.mark.parametrize(
    "n, layout", [(2, "zigzag"), (8, "zigzag"), (4, "contiguous"), (4, "mixed")]
)
def test_ring_equals_gathered_equals_unsplit_attention_with_gradients(n, layout):
    """zigzag: queries and K/V balanced, as in the model; mixed: zig-zag queries against
    contiguous K/V blocks (positions travel with the blocks, so any layout is exact)."""
    case = _case()
    want = _reference(*case)
    if layout != "mixed":
        _assert_equal(_split(n, *case, "gather", layout), want)
    _assert_equal(_split(n, *case, "ring", layout), want)


def test_merging_hops_rescales_each_partial_softmax():
    """Sharp attention (large logits), so each query's hops have very different maxima: adding
    the per-hop results without rescaling each by exp(its log-sum-exp - the total) (the online
    softmax's correction) is far off here, and the gradients with it."""
    case = _case(sharp=8.0)
    _assert_equal(_split(2, *case, "ring", "zigzag"), _reference(*case))


def test_the_ring_never_gathers_and_passes_n_minus_1_hops():
    q, k, v, _, pos = _case()
    mesh = sharding.make_mesh({"context": 4, "data": -1})
    loss = lambda q, k, v: jnp.sum(ring_attention.ring_cross_attention(q, pos, k, v, pos))
    with sharding.use_mesh(mesh):
        fwd = str(jax.make_jaxpr(ring_attention.ring_cross_attention)(q, pos, k, v, pos))
        both = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
    assert "all_gather" not in both and "psum" not in both
    # Loop bodies (run n - 1 = 3 times): K, V and positions forward; K, V, positions, dK, dV
    # backward, then dK and dV once more, home.
    assert fwd.count("ppermute") == 3 and both.count("ppermute") == 3 + 5 + 2


# The model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsplit():
    return _logits_and_grads(CONFIGS["retention"], sharding.make_mesh({}, jax.devices()[:1]))


def test_model_with_ring_attention_equals_the_unsplit_model(unsplit):
    """Zig-zag slices of 10 (half slices of 5), the kv heads split over tensor."""
    config = dataclasses.replace(CONFIGS["retention"], context_attention="ring")
    logits, grads = _logits_and_grads(config, sharding.make_mesh({"context": 4, "tensor": 2}))
    _same_model((logits, grads), unsplit)


# The choice --------------------------------------------------------------------------------------

GiB = 2**30


def test_auto_gathers_what_fits_under_the_limit_and_rings_the_rest():
    assert ring_attention.GATHER_LIMIT_BYTES == 2**30
    # yoco-3b's K/V: 8 kv heads x 128, bf16: 4 KiB per token for K and V together.
    per_token = 2 * 8 * 128 * 2
    fits, too_big = (1, GiB // per_token, 8, 128), (1, GiB // per_token + 1, 8, 128)
    assert ring_attention.gathered_bytes(fits, 2) == GiB
    assert ring_attention.choose("auto", fits, 2) == "gather"
    assert ring_attention.choose("auto", too_big, 2) == "ring"
    assert ring_attention.choose("auto", fits, 4) == "ring"  # float32: twice the bytes
    # The explicit modes hold whatever the size.
    assert ring_attention.choose("gather", too_big, 2) == "gather"
    assert ring_attention.choose("ring", (1, 8, 2, 4), 4) == "ring"


def test_the_size_is_per_device_the_batch_and_heads_split_over_the_other_axes():
    shape = (4, GiB // (2 * 8 * 128 * 2), 8, 128)  # 4 GiB gathered for the whole batch
    mesh = lambda **axes: AbstractMesh(tuple(axes.values()), tuple(axes))
    split = mesh(data=2, fsdp=2, context=2, tensor=1)
    assert ring_attention.gathered_bytes(shape, 2, split) == GiB
    assert ring_attention.choose("auto", shape, 2, split) == "gather"
    assert ring_attention.choose("auto", shape, 2, mesh(data=2, context=4)) == "ring"
    # Heads over tensor where they divide; 3 rows do not split over 2 (counted whole).
    assert ring_attention.gathered_bytes(shape, 2, mesh(context=2, tensor=4)) == GiB
    assert (
        ring_attention.gathered_bytes((3, 8, 8, 128), 2, mesh(data=2, context=4))
        == 3 * 8 * 8 * 128 * 4
    )


def test_context_attention_is_a_runtime_setting_with_three_choices():
    assert CONFIGS["retention"].context_attention == "auto"
    assert "context_attention" in dataclasses.asdict(CONFIGS["retention"].runtime)
    with pytest.raises(ConfigError, match="context_attention='rings' is not valid"):
        dataclasses.replace(CONFIGS["retention"], context_attention="rings")
    with pytest.raises(ValueError, match="context_attention='x' is not valid"):
        ring_attention.choose("x", (1, 8, 2, 4), 4)
