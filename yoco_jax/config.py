"""Model configuration: one frozen dataclass, YAML files in configs/ (read by config_files.py).
Field names follow the official `YOCOArgs` (params.json): an official params.json loads as it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from types import UnionType
from typing import Any

from yoco_jax.config_files import read_config_file
from yoco_jax.errors import ConfigError

# configs/ is at the top of the checkout; yoco_jax/configs links to it, so the files ship in the
# package (package data): found the same way in a checkout and a wheel.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _check_choices(config, choices: dict) -> None:
    for key, valid in choices.items():
        if getattr(config, key) not in valid:
            names = ", ".join(str(v) if v is not None else "null" for v in valid)
            raise ConfigError(f"{key}={getattr(config, key)!r} is not valid; choose one of {names}")


def _check_positive(config, keys) -> None:
    for key in keys:
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a checkpoint must match: the fields that fix the parameters' shapes and meaning
    (the official params.json's, plus `arch`). A saved model's architecture never changes."""

    dim: int
    n_layers: int
    hidden_dim: int
    n_self_heads: int
    n_attn_heads: int
    n_attn_kv_heads: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    sliding_window: int | None = None
    arch: str = "yoco"

    def __post_init__(self):
        _check_choices(self, {"arch": ("yoco", "transformer")})
        _check_positive(
            self,
            [
                "dim",
                "n_layers",
                "hidden_dim",
                "n_self_heads",
                "n_attn_heads",
                "n_attn_kv_heads",
                "vocab_size",
            ],
        )
        if self.n_layers % 2:
            raise ConfigError(
                f"n_layers={self.n_layers} must be even: half self-decoder, half cross-decoder "
                "(the official code silently drops a layer)"
            )
        if self.dim % self.n_self_heads or self.dim % self.n_attn_heads:
            raise ConfigError(
                f"dim={self.dim} must be divisible by n_self_heads={self.n_self_heads} "
                f"and n_attn_heads={self.n_attn_heads}"
            )
        if self.n_attn_heads % self.n_attn_kv_heads:
            raise ConfigError(
                f"n_attn_heads={self.n_attn_heads} must be a multiple of "
                f"n_attn_kv_heads={self.n_attn_kv_heads} (grouped-query attention)"
            )
        if self.self_head_dim % 2 or self.attn_head_dim % 2:
            raise ConfigError("head dims (dim / n_self_heads, dim / n_attn_heads) must be even")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window={self.sliding_window} must be positive or null")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("rope_theta and norm_eps must be positive")

    @property
    def self_head_dim(self) -> int:
        return self.dim // self.n_self_heads

    @property
    def attn_head_dim(self) -> int:
        return self.dim // self.n_attn_heads

    @property
    def half_layers(self) -> int:
        return self.n_layers // 2


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How the model computes: any saved model runs under any runtime settings (they change
    speed, memory and rounding, never which parameters there are)."""

    chunk_size: int = 256  # retention chunk of the chunkwise-parallel form
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "auto"  # auto: pallas on GPU/TPU, xla on CPU (ops/attention_choice.py)
    retention_impl: str = "xla"  # pallas: Triton kernel forward, XLA backward (unmeasured yet)
    remat: str = "none"  # per-layer rematerialization policy
    kernel_backend: str | None = None  # Pallas family: gpu (Triton), tpu (Mosaic); null: device's
    kernel_interpret: bool | None = None  # Pallas interpret mode; null: unless on that device
    # Layers of each stack under one nn.scan: compile time flat in depth, 22% slower steps on an
    # H100. Either form loads into either (model/scan.py converts at the boundaries).
    scan_layers: bool = False
    # The cross-decoder's K/V over mesh.context: gathered once per step, or passed around the
    # ring (ops/ring_attention.py); auto: gather unless the gathered copy passes 1 GiB
    context_attention: str = "auto"

    def __post_init__(self):
        _check_choices(
            self,
            {
                "dtype": ("float32", "bfloat16", "float16"),
                "param_dtype": ("float32", "bfloat16"),
                "attention_impl": ("auto", "xla", "pallas"),
                "retention_impl": ("xla", "pallas"),
                "remat": (
                    "none",
                    "full",
                    "dots",
                    "dots_with_no_batch_dims",
                    "save_mixer_out",
                    "save_qkv_and_mixer_out",
                    "save_all_named",
                ),
                "kernel_backend": (None, "gpu", "tpu"),
                "kernel_interpret": (None, True, False),
                "scan_layers": (True, False),
                "context_attention": ("auto", "gather", "ring"),
            },
        )
        _check_positive(self, ["chunk_size"])

    @property
    def kernel_options(self) -> dict:
        """The keywords set for the Pallas kernels (`backend`, `interpret`); unset ones left out."""
        options = {"backend": self.kernel_backend, "interpret": self.kernel_interpret}
        return {k: v for k, v in options.items() if v is not None}


ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(Architecture))
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(Runtime))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Runtime, Architecture):
    """A YOCO model (or the Transformer baseline with `arch="transformer"`): its `Architecture`
    and `Runtime` settings in one flat, hashable config (`config.dim`, `config.dtype`).

    The first `n_layers // 2` layers form the self-decoder (gated retention, or sliding-window
    attention when `sliding_window` is set), the rest the cross-decoder reading one global KV cache.
    """

    def __post_init__(self):
        Architecture.__post_init__(self)
        Runtime.__post_init__(self)

    @property
    def architecture(self) -> Architecture:
        """What a checkpoint of this model must match (two models with equal ones share weights)."""
        return Architecture(**{k: getattr(self, k) for k in ARCHITECTURE_FIELDS})

    @property
    def runtime(self) -> Runtime:
        return Runtime(**{k: getattr(self, k) for k in RUNTIME_FIELDS})


def _coerce(cls, key: str, value: Any) -> Any:
    """Checks `value` against the dataclass field's annotation; ints become floats where wanted."""
    hint = typing.get_type_hints(cls)[key]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else ()
    allowed = allowed or (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in allowed and isinstance(value, float) and value.is_integer():
        return int(value)
    kinds = tuple(typing.get_origin(t) or t for t in allowed if t is not type(None))
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(t.__name__ for t in kinds)
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {names}")
    return value


def replace_checked(cfg, **overrides):
    """`dataclasses.replace` that rejects unknown keys (naming the valid ones) and bad types."""
    names = [f.name for f in dataclasses.fields(cfg)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(names)}")
    values = {k: _coerce(type(cfg), k, v) for k, v in overrides.items()}
    return dataclasses.replace(cfg, **values)


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("train-"))


def from_dict(data: dict[str, Any], **overrides) -> ModelConfig:
    """Builds a config from a dict (a YAML file or an official params.json) plus overrides.

    Official-only fields that do not change the function (max_batch_size, max_seq_len,
    model_parallel_size, load_checkpoint) are dropped.
    """
    data = {k: v for k, v in data.items() if k not in _OFFICIAL_ONLY_FIELDS}
    required = [f.name for f in dataclasses.fields(ModelConfig) if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in data and k not in overrides]
    if missing:
        raise ConfigError(f"config is missing required keys: {', '.join(missing)}")
    placeholder = ModelConfig(
        dim=8,
        n_layers=2,
        hidden_dim=8,
        n_self_heads=1,
        n_attn_heads=1,
        n_attn_kv_heads=1,
        vocab_size=8,
    )
    return replace_checked(placeholder, **{**data, **overrides})


_OFFICIAL_ONLY_FIELDS = ("max_batch_size", "max_seq_len", "model_parallel_size", "load_checkpoint")


def get_config(name_or_path: str | os.PathLike, **overrides) -> ModelConfig:
    """Loads `configs/<name>.yaml`, a YAML/JSON file path, or a folder holding `params.json`."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "params.json").exists():
        path = path / "params.json"
    elif not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"no config named {str(name_or_path)!r}: give a file path or one of "
                f"{', '.join(available_configs())}"
            )
    return from_dict(read_config_file(path), **overrides)
