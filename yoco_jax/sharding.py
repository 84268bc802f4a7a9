"""Device mesh and the one table mapping logical axis names to mesh axes.

Mesh axes:
  data    pure data parallelism: the batch is split, parameters are replicated.
  fsdp    the batch is split and parameters (their `embed` dimension) are sharded too (ZeRO-3).
  context the sequence (activations' length axis) is split; parameters are replicated over it.
          Mixers that look across positions run per slice (yoco_jax.ops.context_parallel).
  tensor  Megatron-style tensor parallelism over heads, MLP and vocabulary.

Parameters and activations carry logical names (see `yoco_jax.model`); `LOGICAL_RULES` turns them
into mesh axes, so changing the parallelism layout never touches the model code. Code traced
under a mesh (ops/) reads it through `tracing()` only: the mesh, the rules, the context size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")
CONTEXT_AXIS = "context"

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters.
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    # Activations: the batch is split over every data-parallel axis; the residual stream is
    # replicated over `tensor` (each tensor shard needs the whole of it); the length is split
    # over `context`.
    ("activation_batch", BATCH_AXES),
    ("activation_length", "context"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def mesh_shape(axes: Mapping[str, int], device_count: int) -> tuple[int, ...]:
    """Resolves `{data: -1, fsdp: 2, tensor: 1}` (-1 = the remaining devices) to a full shape,
    one size per axis of MESH_AXES (absent axes are 1)."""
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes are {list(MESH_AXES)}")
    sizes = [int(axes.get(name, 1)) for name in MESH_AXES]
    if any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"mesh sizes must be positive or -1 (= the rest), got {dict(axes)}")
    free = [i for i, size in enumerate(sizes) if size == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(axes)}")
    fixed = math.prod(size for size in sizes if size != -1)
    if free:
        if device_count % fixed:
            raise ValueError(
                f"mesh {dict(axes)}: the fixed axes use {fixed} devices, which does not divide "
                f"the {device_count} devices available; choose sizes whose product divides "
                f"{device_count}"
            )
        sizes[free[0]] = device_count // fixed
    elif fixed != device_count:
        raise ValueError(
            f"mesh {dict(axes)} needs {fixed} devices but {device_count} are available; "
            f"set one axis to -1 to use the rest (e.g. mesh.data=-1)"
        )
    return tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all devices of all processes) with axes MESH_AXES.

    Axis types are Auto: the compiler propagates shardings from the ones we pin (parameters,
    batches, `with_logical_constraint` on activations).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch_divides(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises if a global batch of `batch_size` rows cannot be split evenly over the mesh."""
    parts = data_parallel_size(mesh)
    if batch_size % parts:
        raise ValueError(
            f"{what}={batch_size} does not divide over the {parts} data-parallel shards of the "
            f"mesh {dict(mesh.shape)} (data x fsdp); use a multiple of {parts}"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, time] array: rows over (data, fsdp), replicated over tensor."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def process_batch_slice(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """(index, count): this process holds rows [index * B/count, (index + 1) * B/count).

    The data pipeline reads slice `index` of `count` equal slices of every global batch. Processes
    that share rows (a tensor axis spanning processes) get the same slice.
    """
    rows = set()
    for index in sharding.addressable_devices_indices_map((batch_size, 1)).values():
        rows.update(range(*index[0].indices(batch_size)))
    start, stop = min(rows), max(rows) + 1
    size = stop - start
    if len(rows) != size or batch_size % size or start % size:
        raise ValueError(
            f"process {jax.process_index()} holds batch rows that are not one aligned contiguous "
            f"block ({sorted(rows)}); order the mesh devices by process"
        )
    return start // size, batch_size // size


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a pytree of (possibly boxed) abstract arrays, through LOGICAL_RULES.

    Leaves without logical names (optimizer counters, the step) are replicated. A dimension that
    its mesh axes do not divide (e.g. 2 kv heads over tensor=4) is replicated instead, with a
    warning, so a small model still runs on a large mesh.
    """
    specs = nn.get_partition_spec(boxed_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
    values = unbox(boxed_tree)
    fallbacks = []

    def fit(path, value, sharding):
        spec = list(sharding.spec) + [None] * (len(value.shape) - len(sharding.spec))
        for dim, axes in enumerate(spec):
            if axes is not None and value.shape[dim] % axes_size(mesh, axes):
                fallbacks.append(f"{jax.tree_util.keystr(path)} dim {dim} over {axes}")
                spec[dim] = None
        return NamedSharding(mesh, PartitionSpec(*spec))

    fitted = jax.tree_util.tree_map_with_path(fit, values, shardings)
    if fallbacks:
        warnings.warn(
            "replicating dimensions that do not divide over the mesh: " + "; ".join(fallbacks),
            stacklevel=2,
        )
    return fitted


def unbox(tree):
    """Strips the logical-partitioning boxes (without adding sharding constraints)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree_util.tree_map(
        lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box
    )


def axes_size(mesh, axes) -> int:
    """Devices along `axes` (a mesh axis name, a tuple of them, or None: 1)."""
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[name] for name in names)


@dataclasses.dataclass(frozen=True)
class Tracing:
    """The mesh (abstract; empty without one) and logical rules code is being traced under."""

    mesh: jax.sharding.AbstractMesh
    rules: tuple

    @property
    def size(self) -> int:
        """Devices of the mesh (1 without one)."""
        return 1 if self.mesh.empty else self.mesh.size

    @property
    def context_size(self) -> int:
        """Size of the context axis still to split over (1: no mesh, or the axis is manual
        already, inside a context-parallel op)."""
        mesh = self.mesh
        if mesh.empty or CONTEXT_AXIS not in mesh.axis_names:
            return 1
        if mesh.axis_types[mesh.axis_names.index(CONTEXT_AXIS)] == jax.sharding.AxisType.Manual:
            return 1
        return mesh.shape[CONTEXT_AXIS]

    def axes(self, logical: str, size: int):
        """The mesh axes the rules give the logical axis `logical`, if they split a dimension of
        `size` evenly; else None (that dimension is then replicated)."""
        axes = nn.logical_to_mesh_axes((logical,), self.rules)[0]
        return axes if axes is not None and size % axes_size(self.mesh, axes) == 0 else None


def tracing() -> Tracing:
    """The mesh and rules in force (`use_mesh`, or `jax.set_mesh` with flax's axis rules)."""
    return Tracing(jax.sharding.get_abstract_mesh(), tuple(nn.get_logical_axis_rules()))


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
    """The context in which model code is traced: the mesh for `with_logical_constraint` on
    activations and LOGICAL_RULES to translate their names."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


@contextlib.contextmanager
def ensure_mesh(mesh: Mesh):
    """`use_mesh(mesh)` unless it is in force already (a training run enters it once, so its
    steps do not enter it again; a standalone call still traces under the mesh)."""
    active = jax.sharding.get_mesh() == mesh
    if active and tuple(nn.get_logical_axis_rules()) == tuple(LOGICAL_RULES):
        yield
    else:
        with use_mesh(mesh):
            yield
