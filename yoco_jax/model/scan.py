"""A stack of decoder layers, unrolled or under one `nn.scan`, and the two parameter layouts.

Unrolled (`scan_layers=False`), a stack's layers are submodules `layers_0 .. layers_{n-1}`
(the official layout's `layers.N`). Scanned, they are one submodule `layers` whose parameters
carry a leading layer axis (logical name `layers`, replicated), so the stack is traced and
compiled once whatever its depth. `stack_layers` / `unstack_layers` convert any pytree holding
params (params, optimizer state, abstract shapes) between the two; export, checkpoint restore
and loading convert at their boundary, so files look the same either way.

Per-layer inference caches stay a tuple of per-layer caches outside the model; a scanned stack
stacks them on entry and splits them on exit (for YOCO these are the small self-decoder states;
for the Transformer this copies its per-layer K/V once per call).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from yoco_jax.config import ModelConfig
from yoco_jax.model.block import layer_class

_INDEXED = re.compile(r"layers_(\d+)")


def make_layers(cfg: ModelConfig, mixer: str, n: int):
    """`n` decoder layers: a list (unrolled) or one scanned module (assign it to `self.layers`
    in `setup`, so the names are `layers_N` or `layers`)."""
    cls = layer_class(cfg)
    if not cfg.scan_layers:
        return [cls(cfg, mixer) for _ in range(n)]
    # Arguments: positions, fresh (static), mixer_args; a self-mixer's per-layer caches are
    # scanned over, everything else is the same for every layer.
    args = (nn.broadcast,) * 7 if mixer == "cross" else (0, nn.broadcast, nn.broadcast)
    scanned = nn.scan(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, args),
        length=n,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(cfg, mixer)


def run_layers(
    layers, x, positions, fresh: bool = False, caches=None, valid=None, segment_ids=None
):
    """Self-mixer layers over `x` [B, T, D]: (x, new per-layer caches, None without caches);
    `segment_ids` [B, T]: packed documents (ops/documents.py)."""
    if isinstance(layers, list | tuple):
        new = []
        for i, layer in enumerate(layers):
            cache = None if caches is None else caches[i]
            x, c = layer(x, positions, fresh, (cache, valid, segment_ids))
            new.append(c)
        return x, None if caches is None else tuple(new)
    stacked = None if caches is None else _stack(caches)
    x, new = layers(x, positions, fresh, (stacked, valid, segment_ids))
    return x, None if caches is None else _split(new, len(caches))


def run_cross(layers, x, positions, mixer_args: tuple):
    """Cross-decoder layers, every one reading the same `mixer_args` (k, v, lengths, kv_pos,
    k_scale, v_scale, segments)."""
    if isinstance(layers, list | tuple):
        for layer in layers:
            x, _ = layer(x, positions, False, mixer_args)
        return x
    return layers(x, positions, False, mixer_args)[0]


def _stack(items):
    return jax.tree.map(lambda *a: jnp.stack(a), *items)


def _split(tree, n: int) -> tuple:
    return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n))


def _map_dicts(tree, fn: Callable[[Mapping], dict]):
    """`fn` applied bottom-up to every mapping in a pytree of dicts, tuples and NamedTuples."""
    if isinstance(tree, Mapping):
        return fn({k: _map_dicts(v, fn) for k, v in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_map_dicts(v, fn) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(_map_dicts(v, fn) for v in tree)
    return tree


def _stack_leaf(*leaves):
    if isinstance(leaves[0], jax.ShapeDtypeStruct):
        s = leaves[0]
        return jax.ShapeDtypeStruct((len(leaves), *s.shape), s.dtype, sharding=_shift(s, 1))
    return jnp.stack(leaves)


def _unstack_leaf(leaf, i: int):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=_shift(leaf, -1))
    return leaf[i]


def _shift(s: jax.ShapeDtypeStruct, way: int):
    """A named sharding with the layer axis added (way 1, replicated) or removed (way -1)."""
    sharding = s.sharding
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding
    spec = tuple(sharding.spec) + (None,) * (len(s.shape) - len(sharding.spec))
    spec = (None, *spec) if way == 1 else spec[1:]
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))


def _stacked(d: Mapping) -> dict:
    indexed = sorted((int(m.group(1)), k) for k in d if (m := _INDEXED.fullmatch(k)))
    if not indexed:
        return dict(d)
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise ValueError(f"layers {[k for _, k in indexed]} are not numbered 0..n-1")
    out = {k: v for k, v in d.items() if not _INDEXED.fullmatch(k)}
    out["layers"] = jax.tree.map(_stack_leaf, *(d[k] for _, k in indexed))
    return out


def _unstacked(d: Mapping) -> dict:
    if "layers" not in d:
        return dict(d)
    n = {x.shape[0] for x in jax.tree.leaves(d["layers"])}.pop()
    out = {k: v for k, v in d.items() if k != "layers"}
    for i in range(n):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: _unstack_leaf(x, i), d["layers"])
    return out


def stack_layers(tree):
    """Unrolled -> scanned layout: every `layers_0..layers_{n-1}` becomes one `layers` whose
    leaves have a leading axis of n (arrays or jax.ShapeDtypeStruct). Scanned trees unchanged."""
    return _map_dicts(tree, _stacked)


def unstack_layers(tree):
    """Scanned -> unrolled layout (the inverse of `stack_layers`); unrolled trees unchanged."""
    return _map_dicts(tree, _unstacked)


def is_stacked(params) -> bool:
    """Whether `params` (a model's params tree) is in the scanned layout."""
    found = []
    _map_dicts(params, lambda d: found.append("layers" in d) or dict(d))
    return any(found)


def to_layout(tree, scanned: bool):
    """`tree` in the scanned (True) or unrolled (False) layout, whichever it is in now."""
    return stack_layers(tree) if scanned else unstack_layers(tree)
