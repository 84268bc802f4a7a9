"""A lower bound of the memory a training step needs, checked before anything compiles.

Only what a step must hold at once is counted, so a run that fits is never refused: the float32
parameters, gradients and both Adam moments (sharded over fsdp x tensor at best), the residual
stream every layer keeps for the backward pass, and, on the XLA attention path, one layer's
float32 attention scores [rows, heads, seq_len, seq_len]. A seq_len far beyond the device then
fails in a second with a message instead of running out of memory after minutes of compiling.
"""

from __future__ import annotations

import math
import os

import jax

from yoco_jax.errors import ConfigError
from yoco_jax.ops.attention_choice import pick

_FLOAT32 = 4


def check_memory(config, model_config, trainer) -> None:
    """Raises ConfigError when the lower bound exceeds the devices' memory."""
    devices = jax.local_devices()
    parts = lower_bound(config, model_config, trainer)
    per_device = sum(parts.values())
    platform = devices[0].platform
    if platform == "cpu":  # the CPU devices share the host's memory
        have, need, where = _host_memory(), per_device * len(devices), "the host"
    else:
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
        have, need, where = limit, per_device, f"each {platform} device"
    if not have or need <= have:
        return
    listed = ", ".join(f"{name} {size / 2**30:,.1f} GiB" for name, size in parts.items() if size)
    raise ConfigError(
        f"seq_len={config.seq_len} x batch_size={config.batch_size} needs at least "
        f"{need / 2**30:,.1f} GiB on {where} (per device: {listed}) but it has "
        f"{have / 2**30:,.1f} GiB: lower seq_len or batch_size, raise grad_accum, or shard over "
        "more devices (mesh.fsdp, mesh.tensor)"
    )


def lower_bound(config, model_config, trainer) -> dict[str, float]:
    """{what: bytes} per device."""
    mesh = trainer.mesh.shape
    rows = math.ceil(config.batch_size // config.grad_accum / (mesh["data"] * mesh["fsdp"]))
    state = trainer.abstract_state
    gradients = _bytes(state.params)  # as many as the parameters, in their dtype
    length = config.seq_len
    parts = {
        "training state and gradients": (_bytes(state) + gradients)
        / (mesh["fsdp"] * mesh.get("tensor", 1)),
        "saved activations": rows * length * model_config.dim * model_config.n_layers * _FLOAT32,
        "attention scores": 0.0,
    }
    q = jax.ShapeDtypeStruct((1, length, 1, model_config.attn_head_dim), model_config.dtype)
    if pick(model_config.attention_impl, "causal", q, length) == "xla":
        heads = math.ceil(model_config.n_attn_heads / mesh.get("tensor", 1))
        queries = math.ceil(length / mesh.get("context", 1))
        parts["attention scores"] = rows * heads * queries * length * _FLOAT32
    return parts


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
