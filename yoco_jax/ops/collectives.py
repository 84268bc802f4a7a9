"""Collectives whose backward reduces in float32, for use inside `shard_map`.

A bfloat16 gradient summed across devices loses bits at every add; XLA:CPU also aborts on a
bfloat16 reduce-scatter whose reduction carries a sharding annotation ("Invalid binary
instruction opcode copy"), which is what autodiff of a plain `all_gather` emits under a mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array


def all_gather(x: Array, axis_name: str, axis: int) -> Array:
    """`lax.all_gather(x, axis_name, axis=axis, tiled=True)`; for floating x its transpose, a
    reduce-scatter of the cotangent, runs in float32 and returns the cotangent's dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):  # positions, ids: no gradient
        return jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)
    return _all_gather(x, axis_name, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _all_gather(x, axis_name, axis):
    return jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)


def _forward(x, axis_name, axis):
    return _all_gather(x, axis_name, axis), None


def _backward(axis_name, axis, _, grad):
    wide = grad.astype(jnp.promote_types(grad.dtype, jnp.float32))
    summed = jax.lax.psum_scatter(wide, axis_name, scatter_dimension=axis, tiled=True)
    return (summed.astype(grad.dtype),)


_all_gather.defvjp(_forward, _backward)
