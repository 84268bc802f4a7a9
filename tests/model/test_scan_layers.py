"""`scan_layers`: the layer stacks under nn.scan compute what the unrolled layers compute, and
the parameters convert both ways at every boundary (export, checkpoints, loading)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoco_jax
from yoco_jax import sharding
from yoco_jax.config import RUNTIME_FIELDS, ConfigError, get_config
from yoco_jax.export import read_official, write_official
from yoco_jax.model import build_model
from yoco_jax.model.scan import is_stacked, stack_layers, unstack_layers
from yoco_jax.train.checkpoint import Checkpointer
from yoco_jax.train.load import load_params
from yoco_jax.train.step import TrainState

NAMES = ["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"]
# Awkward sizes: 13 tokens against retention chunks of 4 and a window of 5.
OVERRIDES = {"chunk_size": 4, "n_layers": 4}
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 13)).astype(np.int32)


def _config(name, **extra):
    overrides = {**OVERRIDES, **({"sliding_window": 5} if "swa" in name else {}), **extra}
    return get_config(name, **overrides)


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    """(unrolled Model, the same weights as a scanned Model)."""
    model = yoco_jax.init(_config(request.param))
    return model, model.replace(scan_layers=True)


def _loss(config, tokens):
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(*tokens.shape, 256)), jnp.float32)
    return jax.jit(
        jax.grad(lambda p: jnp.sum(build_model(config).apply({"params": p}, tokens) * weights))
    )


def _assert_trees_equal(got, want, atol=0.0):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=atol, atol=atol)


def test_scanned_params_have_a_leading_layer_axis(pair):
    model, scanned = pair
    assert not is_stacked(model.params) and is_stacked(scanned.params)
    n = model.config.n_layers // (1 if model.config.arch == "transformer" else 2)
    stack = scanned.params if model.config.arch == "transformer" else scanned.params["self_decoder"]
    assert {x.shape[0] for x in jax.tree.leaves(stack["layers"])} == {n}
    # The conversion is exact both ways, and the scanned model's own init has that layout.
    _assert_trees_equal(unstack_layers(scanned.params), model.params)
    own = yoco_jax.init(scanned.config).params
    assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, scanned.params)


def test_logits_and_gradients_equal(pair):
    model, scanned = pair
    np.testing.assert_allclose(scanned.logits(TOKENS), model.logits(TOKENS), atol=1e-5, rtol=1e-5)
    want = _loss(model.config, TOKENS)(model.params)
    got = _loss(scanned.config, TOKENS)(scanned.params)
    _assert_trees_equal(unstack_layers(got), want, atol=1e-5)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(want))


def test_remat_under_scan_gives_the_same_gradients():
    model = yoco_jax.init(_config("yoco-tiny"))
    scanned = model.replace(scan_layers=True, remat="full")
    want = _loss(model.config, TOKENS)(model.params)
    _assert_trees_equal(unstack_layers(_loss(scanned.config, TOKENS)(scanned.params)), want, 1e-5)


def test_generate_gives_the_same_greedy_tokens(pair):
    model, scanned = pair
    prompts = [TOKENS[0, :9].tolist(), TOKENS[1, :4].tolist()]  # mixed lengths in one batch
    want = model.generate(prompts, max_new_tokens=6)
    got = scanned.generate(prompts, max_new_tokens=6)
    assert got == want


@pytest.mark.parametrize("name", NAMES[:2])
def test_exported_files_are_identical(tmp_path, name):
    model = yoco_jax.init(_config(name))
    write_official(tmp_path / "a", model.config, model.params)
    scanned = model.replace(scan_layers=True)
    write_official(tmp_path / "b", scanned.config, scanned.params)
    for file in ("params.json", "model.safetensors"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    config, params = read_official(tmp_path / "b", scan_layers=True)
    assert config.scan_layers
    _assert_trees_equal(params, stack_layers(model.params))


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_a_checkpoint_restores_into_the_other_layout(tmp_path, saved_scanned):
    """Training state (params and Adam's moments) saved in one layout resumes in the other;
    load_params/load_pretrained give the saved layout, or the asked one."""
    model = yoco_jax.init(_config("yoco-tiny"))
    params = stack_layers(model.params) if saved_scanned else model.params
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x, opt_state)
    state = TrainState(jnp.int32(3), params, opt_state, jnp.zeros(2, jnp.uint32))
    saved = dataclasses.replace(model.config, scan_layers=saved_scanned)
    checkpointer = Checkpointer(str(tmp_path), async_save=False)
    checkpointer.save(3, state, {}, {"model": dataclasses.asdict(saved)})
    checkpointer.wait()

    other = unstack_layers(state) if saved_scanned else stack_layers(state)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), other
    )
    restored, _, _ = checkpointer.restore(3, abstract)
    checkpointer.close()
    assert is_stacked(restored.params) != saved_scanned
    _assert_trees_equal(restored, other)

    config, loaded = load_params(str(tmp_path))
    assert config.scan_layers == saved_scanned
    _assert_trees_equal(loaded, params)
    flipped = yoco_jax.load_pretrained(tmp_path, scan_layers=not saved_scanned)
    _assert_trees_equal(flipped.params, other.params)


@pytest.mark.slow  # a context mesh
def test_context_parallel_with_scan_equals_one_device():
    """The self-decoder's per-slice mixers and the cross-decoder's zig-zag balance work under
    the scan, with the stacked parameters sharded by the rules ('layers' replicated)."""
    config = _config("yoco-tiny", scan_layers=True)
    tokens = np.random.default_rng(2).integers(0, 256, (2, 16)).astype(np.int32)
    module = build_model(config)
    init = lambda: module.init(jax.random.key(0), tokens[:, :4])
    mesh = sharding.make_mesh({"context": 4, "data": 2})
    with sharding.use_mesh(mesh):
        boxed = jax.eval_shape(init)
        shardings = sharding.logical_shardings(boxed, mesh)["params"]
        params = jax.device_put(sharding.unbox(init())["params"], shardings)
        assert shardings["self_decoder"]["layers"]["ffn"]["fc1"]["kernel"].spec[0] is None
        got = jax.device_get(_loss(config, tokens)(params))
    want = _loss(dataclasses.replace(config, scan_layers=False), tokens)(unstack_layers(params))
    _assert_trees_equal(unstack_layers(got), want, atol=1e-5)


def test_scan_layers_is_a_runtime_setting():
    assert "scan_layers" in RUNTIME_FIELDS
    with pytest.raises(ConfigError, match="scan_layers"):
        get_config("yoco-tiny", scan_layers="yes")
