"""The model config's two halves: the architecture (what a checkpoint must match) and the
runtime settings (how it computes, kernel options included), seen as one flat hashable config."""

import dataclasses

import jax
import numpy as np
import pytest

import yoco_jax
from yoco_jax.config import ARCHITECTURE_FIELDS, RUNTIME_FIELDS, ModelConfig
from yoco_jax.config_files import parse_overrides
from yoco_jax.errors import ConfigError


def test_every_field_is_in_exactly_one_half():
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    assert sorted(names) == sorted(ARCHITECTURE_FIELDS + RUNTIME_FIELDS)
    assert not set(ARCHITECTURE_FIELDS) & set(RUNTIME_FIELDS)
    assert {"dtype", "param_dtype", "attention_impl", "remat", "chunk_size"} <= set(RUNTIME_FIELDS)
    assert {"kernel_backend", "kernel_interpret"} <= set(RUNTIME_FIELDS)


def test_kernel_options_are_config_keys_and_part_of_its_hash():
    """A jitted function keyed on the config compiles again when a kernel option changes."""
    plain = yoco_jax.get_config("yoco-tiny")
    cfg = yoco_jax.get_config(
        "yoco-tiny", **parse_overrides(["kernel_backend=gpu", "kernel_interpret=true"])
    )
    assert (cfg.kernel_backend, cfg.kernel_interpret) == ("gpu", True)
    assert cfg.kernel_options == {"backend": "gpu", "interpret": True}
    assert plain.kernel_options == {}
    assert cfg != plain and hash(cfg) != hash(plain)
    assert cfg.architecture == plain.architecture and cfg.runtime != plain.runtime
    traced = []
    keyed = jax.jit(lambda config, x: traced.append(config) or x, static_argnums=0)
    keyed(plain, 1.0), keyed(cfg, 1.0), keyed(plain, 1.0)
    assert traced == [plain, cfg]
    with pytest.raises(ConfigError, match="kernel_backend='cuda' is not valid"):
        yoco_jax.get_config("yoco-tiny", kernel_backend="cuda")


def test_a_saved_model_changes_runtime_settings_only():
    model = yoco_jax.init(yoco_jax.get_config("yoco-tiny", n_layers=2))
    fast = model.replace(dtype="bfloat16", param_dtype="bfloat16", kernel_interpret=True)
    assert fast.config.architecture == model.config.architecture
    assert all(x.dtype == np.dtype("bfloat16") for x in jax.tree.leaves(fast.params))
    with pytest.raises(ConfigError, match="cannot override vocab_size"):
        model.replace(vocab_size=512)
