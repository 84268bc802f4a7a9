"""Random weights without a host round trip, and the jitted pieces the suite times."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from yoco_jax.config import ModelConfig
from yoco_jax.model import build_model, init_cache
from yoco_jax.model.cache import tree_bytes


@functools.cache
def param_shapes(cfg: ModelConfig):
    """The parameter pytree as ShapeDtypeStructs (traced, never compiled or allocated)."""
    variables = jax.eval_shape(
        build_model(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
    )
    return nn.unbox(variables["params"])


def random_params(cfg: ModelConfig, seed: int = 0):
    """Normal(0, 0.02) weights in cfg.param_dtype, drawn leaf by leaf on the device (eager ops
    compile once per shape, so no host round trip and no compile of the whole init)."""
    leaves, tree = jax.tree.flatten(param_shapes(cfg))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten(
        [0.02 * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)]
    )


def params_bytes(cfg: ModelConfig) -> int:
    return tree_bytes(param_shapes(cfg))


def needs_fresh(cfg: ModelConfig) -> bool:
    """Whether a first chunk must say fresh=True (it picks the flash/causal path). Retention
    ignores it, so YOCO-gRet compiles one chunk function per cache size instead of two."""
    return cfg.arch == "transformer" or cfg.sliding_window is not None


@functools.partial(jax.jit, static_argnames=("cfg", "fresh"), donate_argnames=("cache",))
def extend(cfg: ModelConfig, params, tokens, cache, fresh: bool):
    """One `extend` call: tokens [B, T] into the cache; returns (last logits [B, V], cache)."""
    return build_model(cfg).apply({"params": params}, tokens, cache, fresh=fresh, method="extend")


@functools.partial(jax.jit, static_argnames=("cfg", "batch", "max_len"))
def empty_cache(cfg: ModelConfig, batch: int, max_len: int, length):
    """A cache allocated on the device whose rows already hold `length` tokens (zeros)."""
    cache = init_cache(cfg, batch, max_len)
    return cache._replace(lengths=jnp.full((batch,), length, jnp.int32))


@functools.partial(jax.jit, static_argnames=("cfg", "steps"), donate_argnames=("cache",))
def decode(cfg: ModelConfig, params, cache, token, steps: int):
    """`steps` greedy decode steps (extend with T=1) in one lax.fori_loop; token [B, 1]."""
    module = build_model(cfg)

    def body(_, carry):
        cache, token = carry
        logits, cache = module.apply({"params": params}, token, cache, method="extend")
        return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None]

    return jax.lax.fori_loop(0, steps, body, (cache, token))
