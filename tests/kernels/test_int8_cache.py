"""The int8 K/V cache (`kv_cache_dtype=int8`): quantization error within its bound, the kernels'
int8 path against the reference on dequantized K/V (GPU and TPU semantics, interpreted), the XLA
paths, decode with the int8 cache against decode with the dequantized values, sizes and files."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax import sharding
from yoco_jax.config import get_config
from yoco_jax.errors import ConfigError
from yoco_jax.inference import generate
from yoco_jax.inference.cache_io import load_cache, save_cache
from yoco_jax.kernels import chunk_attention, decode_attention
from yoco_jax.kernels.int8 import dequantize, quantize
from yoco_jax.kernels.reference import decode_attention_reference
from yoco_jax.model.cache import (
    KVCache,
    QuantizedKV,
    cache_bytes,
    init_cache,
    map_kv,
    tree_bytes,
)
from yoco_jax.ops.attention import attend, cache_attention, cached, causal
from yoco_jax.serve.engine import Engine, Request


def test_quantization_error_is_at_most_half_a_step_per_token_and_head():
    """|x - dequantize(quantize(x))| <= max|x| / 254 for each token and head (rounding to the
    nearest of 255 levels spanning [-max|x|, max|x|]), at magnitudes from 1e-3 to 1e3, and a
    head of zeros stays zeros."""
    rng = np.random.default_rng(0)
    magnitude = 10.0 ** rng.uniform(-3, 3, (2, 9, 3, 1))
    x = rng.standard_normal((2, 9, 3, 64)) * magnitude
    x[1, 4, 2] = 0.0
    values, scale = quantize(jnp.asarray(x, jnp.float32))
    assert values.dtype == jnp.int8 and scale.dtype == jnp.float32 and scale.shape == (2, 9, 3)
    assert np.abs(np.asarray(values, np.int32)).max() == 127  # the largest entry uses the range
    error = np.abs(np.asarray(dequantize(values, scale, jnp.float32)) - x)
    bound = np.abs(x).max(axis=-1, keepdims=True) / 254
    assert np.all(error <= bound * (1 + 1e-5) + 1e-30)
    assert np.all(np.asarray(dequantize(values, scale, jnp.float32))[1, 4, 2] == 0.0)


def _int8_cache(seed, batch, q_len, cache_len, heads, kv_heads, head_dim, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
    shape = (batch, cache_len, kv_heads, head_dim)
    # Per-token magnitudes that differ by 100x: one scale for the cache would lose the small ones.
    size = 10.0 ** jax.random.uniform(keys[2], shape[:3] + (1,), minval=-1, maxval=1)
    (k, k_scale), (v, v_scale) = (quantize(jax.random.normal(s, shape) * size) for s in keys[1:])
    return q, k, v, k_scale, v_scale


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a - b).max() / np.abs(b).max()


# (batch, Tq, S, Hq, Hkv, D, lengths): GQA 3 and 4, caches not multiples of the 16-key blocks.
DECODE = (2, 1, 50, 6, 2, 16, [50, 9])
CHUNK = (2, 20, 70, 8, 2, 16, [70, 33])


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("kind", ["decode", "chunk"])
def test_kernels_int8_path_equals_the_reference_on_dequantized_kv(backend, kind):
    batch, q_len, cache_len, heads, kv_heads, head_dim, lengths = (
        DECODE if kind == "decode" else CHUNK
    )
    q, k, v, ks, vs = _int8_cache(1, batch, q_len, cache_len, heads, kv_heads, head_dim)
    lengths = jnp.asarray(lengths, jnp.int32)
    kernel = decode_attention if kind == "decode" else chunk_attention
    blocks = {"block_keys": 16} if kind == "decode" else {"block_keys": 16, "block_rows": 16}
    call = functools.partial(kernel, backend=backend, interpret=True, **blocks)
    got = jax.jit(lambda *a: call(*a[:4], k_scale=a[4], v_scale=a[5]))(q, k, v, lengths, ks, vs)
    deq = lambda x, s: dequantize(x, s, jnp.float32)
    want = jax.jit(decode_attention_reference)(q, deq(k, ks), deq(v, vs), lengths)
    assert got.dtype == q.dtype and _rel(got, want) < 1e-5


@pytest.mark.parametrize("backend,platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_int8_kernels_lower_for_the_real_devices(backend, platform):
    q1, q64 = (jax.ShapeDtypeStruct((1, t, 6, 128), jnp.bfloat16) for t in (1, 64))
    kv = jax.ShapeDtypeStruct((1, 1024, 2, 128), jnp.int8)
    scale = jax.ShapeDtypeStruct((1, 1024, 2), jnp.float32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    for kernel, q in [(decode_attention, q1), (chunk_attention, q64)]:
        fn = lambda q, k, v, n, ks, vs, f=kernel: f(
            q, k, v, n, k_scale=ks, v_scale=vs, backend=backend, interpret=False
        )
        lowered = jax.jit(fn).trace(q, kv, kv, lengths, scale, scale)
        lowered.lower(lowering_platforms=(platform,))


@pytest.mark.parametrize("q_len", [1, 20])  # the masked decode path, the blocked chunk path
def test_xla_paths_with_int8_equal_them_on_dequantized_kv(q_len):
    q, k, v, ks, vs = _int8_cache(2, 2, q_len, 70, 4, 2, 8)
    lengths = jnp.asarray([70, 41], jnp.int32)
    attend = jax.jit(functools.partial(cache_attention, impl="xla"))
    got = attend(q, k, v, lengths, k_scale=ks, v_scale=vs)
    want = attend(q, dequantize(k, ks, q.dtype), dequantize(v, vs, q.dtype), lengths)
    np.testing.assert_array_equal(got, want)


def test_kernels_refuse_half_the_scales():
    q, k, v, ks, _ = _int8_cache(3, 1, 1, 32, 2, 2, 16)
    with pytest.raises(ValueError, match="both k_scale and v_scale"):
        decode_attention(q, k, v, jnp.asarray([5]), k_scale=ks, interpret=True)
    with pytest.raises(ValueError, match="must be int8"):
        chunk_attention(q, q, q, jnp.asarray([1]), k_scale=ks[:, :1], v_scale=ks[:, :1])


class DequantizedKV(KVCache):
    """The reference: a float32 cache that stores what the int8 cache dequantizes to."""

    def write(self, k, v, positions, valid):
        fake = lambda x: dequantize(*quantize(x), jnp.float32)
        return DequantizedKV(*KVCache.write(self, fake(k), fake(v), positions, valid))


def _greedy(model, cache, prompt, steps):
    """Prefill (right-padded rows of 9 and 5 tokens), then greedy decode: logits per step."""
    extend = jax.jit(lambda p, t, c, n: model.module.apply({"params": p}, t, c, n, method="extend"))
    logits, cache = extend(model.params, prompt, cache, jnp.asarray([9, 5]))
    out = [logits]
    for _ in range(steps):
        logits, cache = extend(model.params, jnp.argmax(logits, -1)[:, None], cache, None)
        out.append(logits)
    return jnp.stack(out), cache


@pytest.mark.parametrize("name", ["yoco-tiny", "transformer-tiny"])
def test_decode_with_the_int8_cache_equals_decode_with_its_dequantized_values(name):
    cfg = yoco_jax.get_config(name, n_layers=2, dtype="float32", kv_cache_dtype="int8")
    model = yoco_jax.init(cfg, seed=1)
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9)))
    got, cache = _greedy(model, init_cache(cfg, 2, 24), prompt, 6)
    reference = model.replace(kv_cache_dtype=None)
    float_cache = map_kv(init_cache(reference.config, 2, 24), lambda c: DequantizedKV(*c))
    want, want_cache = _greedy(reference, float_cache, prompt, 6)
    np.testing.assert_array_equal(got, want)  # same logits, hence the same greedy tokens
    for q, f in zip(_kvs(cache), _kvs(want_cache)):
        assert isinstance(q, QuantizedKV) and q.k.dtype == jnp.int8
        np.testing.assert_array_equal(dequantize(q.k, q.k_scale, jnp.float32), f.k)
        np.testing.assert_array_equal(dequantize(q.v, q.v_scale, jnp.float32), f.v)
    # and the int8 cache does change the logits (the test can tell the caches apart)
    exact, _ = _greedy(reference, init_cache(reference.config, 2, 24), prompt, 0)
    assert 0 < _rel(got[0], exact[0]) < 0.05


def _kvs(cache):
    return [cache.kv] if hasattr(cache, "kv") else list(cache.layers)


@pytest.mark.parametrize("name", ["yoco-tiny", "transformer-tiny", "yoco-swa-tiny"])
def test_cache_bytes_counts_the_int8_cache(name):
    cfg = yoco_jax.get_config(name, dtype="bfloat16", kv_cache_dtype="int8")
    shapes = jax.eval_shape(lambda: init_cache(cfg, 3, 100))
    assert cache_bytes(cfg, 3, 100) == tree_bytes(shapes)
    kv = _kvs(shapes)[0]
    assert kv.k.dtype == jnp.int8 and kv.k_scale.shape == (3, 100, cfg.n_attn_kv_heads)
    # int8 + a float32 scale per token and head, against bfloat16: (D + 4) / (2 D) of the K/V
    bf16 = cfg.n_attn_kv_heads * cfg.attn_head_dim * 2
    assert tree_bytes(kv) == 3 * 100 * 2 * cfg.n_attn_kv_heads * (cfg.attn_head_dim + 4)
    assert tree_bytes(kv) < 3 * 100 * 2 * bf16


def test_save_and_load_an_int8_cache(tmp_path):
    cfg = yoco_jax.get_config("yoco-tiny", n_layers=2, dtype="float32", kv_cache_dtype="int8")
    model = yoco_jax.init(cfg, seed=1)
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9)))
    _, cache = _greedy(model, init_cache(cfg, 2, 24), prompt, 1)
    path = save_cache(tmp_path / "c.npz", cache, cfg)
    loaded, _, _ = load_cache(path, cfg, max_len=40)
    assert isinstance(loaded.kv, QuantizedKV) and loaded.max_len == 40
    for a, b in zip(loaded.kv, cache.kv):
        np.testing.assert_array_equal(a[:, :24], b)
        assert not np.any(a[:, 24:])
    as_float, _, _ = load_cache(path, dataclasses.replace(cfg, kv_cache_dtype=None))  # dequantized
    assert isinstance(as_float.kv, KVCache) and as_float.kv.k.dtype == jnp.float32
    np.testing.assert_array_equal(as_float.kv.k, dequantize(cache.kv.k, cache.kv.k_scale, "f4"))


def test_kv_cache_dtype_is_checked():
    with pytest.raises(ConfigError, match="kv_cache_dtype='int4' is not valid"):
        yoco_jax.get_config("yoco-tiny", kv_cache_dtype="int4")


def _attend_int8(runtime, lengths, tq=1, s=64, hq=4, hkv=2, d=16):
    """attend on an int8 cache under the current mesh, and on its dequantized values unsplit."""
    q, k, v, ks, vs = _int8_cache(4, 2, tq, s, hq, hkv, d)
    lengths = jnp.asarray(lengths, jnp.int32)
    call = jax.jit(lambda *a: attend(*a[:3], cached(a[3]), runtime, k_scale=a[4], v_scale=a[5]))
    deq = lambda x, s: dequantize(x, s, jnp.float32)
    return (
        call,
        (q, k, v, lengths, ks, vs),
        attend(q, deq(k, ks), deq(v, vs), cached(lengths), runtime),
    )


@pytest.mark.parametrize(
    "impl,mesh", [("xla", {"context": 4, "data": 2}), ("pallas", {"tensor": 4, "data": 2})]
)
def test_attend_splits_the_int8_scales_with_the_cache(impl, mesh):
    """context=4: the cache and its scales split along their length (each device dequantizes its
    slice); tensor=4 with 2 kv heads: the kernel per device, the scales' heads gathered as k's."""
    runtime = get_config("yoco-tiny", attention_impl=impl, kernel_interpret=True).runtime
    call, args, want = _attend_int8(runtime, [64, 23])
    with sharding.use_mesh(sharding.make_mesh(mesh)):
        assert "shard_map" in str(jax.make_jaxpr(call)(*args))
        got = call(*args)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_attend_refuses_scales_outside_a_cache():
    q, k, v, ks, vs = _int8_cache(5, 1, 4, 4, 2, 2, 8)
    with pytest.raises(ValueError, match="give them with cached"):
        attend(q, k, v, causal(), get_config("yoco-tiny").runtime, k_scale=ks, v_scale=vs)


PROMPTS = [[5, 9, 300, 41, 7, 7, 12], [900, 3], list(range(20, 53))]
TEMPERATURES = [0.0, 0.9, 0.0]


@pytest.mark.slow  # generate and a server engine, int8 and float32
def test_generate_with_int8_equals_generate_on_its_dequantized_values_and_the_server():
    """End to end: `generate` on an int8 cache gives the tokens of `generate` on a float32 cache
    holding the dequantized values (every prefill chunk and decode step alike), here also the
    float cache's own tokens; the server's Engine on the int8 config gives generate's."""
    cfg = yoco_jax.get_config("yoco-tiny", dtype="float32", vocab_size=2048, kv_cache_dtype="int8")
    model = yoco_jax.init(cfg, 1)
    reference = model.replace(kv_cache_dtype=None)
    options = {"prefill_chunk": 16, "max_len": 64}
    tokens = lambda m, cache=None: [
        c.tokens for c in generate(m, PROMPTS, 12, cache=cache, **options)
    ]
    got = tokens(model, init_cache(cfg, 3, 64))
    assert isinstance(init_cache(cfg, 3, 64).kv, QuantizedKV)
    assert got == tokens(
        reference, map_kv(init_cache(reference.config, 3, 64), lambda c: DequantizedKV(*c))
    )
    assert got == tokens(reference)

    engine = Engine(model, None, slots=2, max_len=64, prefill_chunk=16, block=4)
    done = {}
    for i, (p, t) in enumerate(zip(PROMPTS, TEMPERATURES)):
        on_event = lambda kind, data, i=i: done.__setitem__(i, data) if kind == "done" else None
        engine.submit(Request(p, 12, t, seed=3, on_event=on_event))
    engine.run_until_idle()
    for i, (p, t) in enumerate(zip(PROMPTS, TEMPERATURES)):
        alone = generate(model, p, 12, temperature=t, seed=3, **options)
        assert done[i].tokens == alone.tokens, i
