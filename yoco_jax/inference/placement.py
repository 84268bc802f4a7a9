"""Where inference arrays live on a device mesh (`yoco_jax.sharding.make_mesh`).

Parameters follow the logical rules of training (sharded over fsdp / tensor, replicated over
data and context). Every batch-first array (tokens, logits, per-row state) has its rows split
over the data-parallel axes; the K/V caches [B, S, Hkv, Dh] are also split along S over
`context`, so each device holds S / context positions and decoding merges per-device partial
attention by log-sum-exp (yoco_jax.ops.context_parallel.cache_attention). A prompt chunk is
split along its length over `context` by the model itself (retention states scanned across
devices, window halos).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from yoco_jax import sharding
from yoco_jax.config import ModelConfig
from yoco_jax.model import build_model, init_cache
from yoco_jax.model.cache import KVCache

ROWS = P(sharding.BATCH_AXES)
KV = P(sharding.BATCH_AXES, "context")


def context_size(mesh: Mesh | None) -> int:
    """Size of the mesh's `context` axis (1 without a mesh)."""
    return 1 if mesh is None else mesh.shape["context"]


def check_mesh(config: ModelConfig, mesh: Mesh | None) -> None:
    """Refuses a mesh that inference cannot use, naming the fix."""
    if mesh is None:
        return
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != sharding.MESH_AXES:
        raise ValueError(
            f"mesh must be a jax Mesh with the axes {sharding.MESH_AXES}: build it with "
            "yoco_jax.sharding.make_mesh({'context': 4, ...})"
        )
    if config.arch == "transformer" and context_size(mesh) > 1:
        raise ValueError(
            f"mesh context={context_size(mesh)}: the Transformer baseline has no "
            "context-parallel attention; use a YOCO model or a mesh with context=1"
        )


def check_rows(rows: int, mesh: Mesh | None, what: str) -> None:
    """Refuses `rows` batch rows that do not split over the mesh's data-parallel axes."""
    if mesh is not None:
        sharding.check_batch_divides(rows, mesh, what)


def round_rows(rows: int, mesh: Mesh | None) -> int:
    """`rows` rounded up to a multiple of the data-parallel size (padding rows)."""
    parts = 1 if mesh is None else sharding.data_parallel_size(mesh)
    return -(-rows // parts) * parts


def use(mesh: Mesh | None):
    """The context to trace and run under: the mesh and its rules (nothing without a mesh)."""
    return contextlib.nullcontext() if mesh is None else sharding.use_mesh(mesh)


@functools.lru_cache(maxsize=8)
def _param_shardings(config: ModelConfig, mesh: Mesh):
    """NamedShardings of the parameters by the logical rules (derived once per config, mesh)."""
    # Tokens that split over the mesh: the caller may be tracing under it already.
    tokens = jnp.zeros((sharding.data_parallel_size(mesh), context_size(mesh)), jnp.int32)
    init = lambda: build_model(config).init(jax.random.key(0), tokens)
    return sharding.logical_shardings(jax.eval_shape(init)["params"], mesh)


def place_params(config: ModelConfig, params, mesh: Mesh | None):
    """The parameters on the mesh (as they are without one; a no-op when already placed)."""
    return params if mesh is None else jax.device_put(params, _param_shardings(config, mesh))


def _specs(tree):
    """PartitionSpecs of an inference pytree: K/V caches split along rows and length, other
    arrays along rows (their first dimension), scalars replicated."""
    is_kv = lambda x: isinstance(x, KVCache)
    row = lambda x: ROWS if jnp.ndim(x) else P()
    spec = lambda x: KVCache(KV, KV) if is_kv(x) else row(x)
    return jax.tree.map(spec, tree, is_leaf=is_kv)


def place(tree, mesh: Mesh | None):
    """Cache, logits or decode state onto the mesh (unchanged without one). A copy when the
    layout changes: the caller's arrays stay usable."""
    if mesh is None:
        return tree
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _specs(tree))
    return jax.device_put(tree, shardings)


def constrain(tree):
    """Inside jit: pins `tree` to the layout of `place` when traced under a mesh (else as is),
    so every call returns what the next one expects."""
    if jax.sharding.get_abstract_mesh().empty:
        return tree
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, _specs(tree))


def new_cache(config: ModelConfig, rows: int, max_len: int, mesh: Mesh | None):
    """An empty cache, created already split over the mesh (never whole on one device)."""
    if mesh is None:
        return init_cache(config, rows, max_len)
    make = lambda: init_cache(config, rows, max_len)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _specs(jax.eval_shape(make)))
    return jax.jit(make, out_shardings=shardings)()


def mesh_of(tree) -> Mesh | None:
    """The mesh a placed cache or decode state lives on (None: not placed by `place`)."""
    leaf = jax.tree.leaves(tree)[0]
    layout = getattr(leaf, "sharding", None)
    if isinstance(layout, NamedSharding) and tuple(layout.mesh.axis_names) == sharding.MESH_AXES:
        return layout.mesh
    return None
