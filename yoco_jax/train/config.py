"""TrainConfig: every knob of a training run, from configs/train-<name>.yaml plus key=value.

Keys are the dataclass fields. Three prefixes reach into nested settings:
  model.<key>=value  overrides a field of the model config named by `model` (e.g. model.dim=128)
  data.<key>=value   overrides a field of the DataConfig (e.g. data.path=corpus/)
  mesh.<axis>=size   sets one mesh axis (e.g. mesh.data=2 mesh.fsdp=-1 mesh.context=4);
                     mesh={...} sets all
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from yoco_jax.config import (
    CONFIG_DIR,
    ConfigError,
    replace_checked,
)
from yoco_jax.config_files import parse_overrides, read_config_file
from yoco_jax.data.config import DataConfig
from yoco_jax.train.optim import SCHEDULES

DEFAULT_CONFIG = "demo"
NAN_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # What to train, on what.
    model: str = "yoco-demo"  # a model config name (configs/<name>.yaml) or path
    model_overrides: dict = dataclasses.field(default_factory=dict)
    tokenizer: str = "demo"  # "demo" (the shipped tokenizer) or a sentencepiece .model path
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # The global batch is the concatenation of `data_shards` independent data streams (each of
    # batch_size / data_shards rows); 0 = one per process. Fix it to compare runs that use
    # different numbers of processes: the batches are then identical.
    data_shards: int = 0
    output_dir: str = "runs/demo"
    seed: int = 0
    # Batch and length.
    steps: int = 1000
    batch_size: int = 8  # global, in sequences, over all devices and micro-batches
    seq_len: int = 512
    grad_accum: int = 1  # micro-batches per step
    # AdamW (official defaults) and the learning-rate schedule.
    learning_rate: float = 1.5e-4
    schedule: str = "linear"  # linear | cosine | constant, after the warmup
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # the final learning rate, as a fraction of the peak
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-6
    weight_decay: float = 0.05
    clip_norm: float = 2.0  # global gradient norm; 0 = no clipping (the only way to turn it off)
    loss_chunk: int = 1024  # positions per cross-entropy chunk (bounds float32 logits memory)
    # Packed documents computed as if each were alone (docs/training.md); false: the official
    # semantics, a row is one causal context.
    document_resets: bool = False
    # Parallelism: mesh axis sizes, -1 = the remaining devices.
    mesh: dict = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "context": 1, "tensor": 1}
    )
    # Checkpoints, evaluation, logging.
    checkpoint_every: int = 500  # steps; a final checkpoint is always written
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    eval_every: int = 0  # steps; 0 = only at the end
    eval_batches: int = 4  # per data shard
    log_every: int = 10
    nan_policy: str = "stop"  # a non-finite loss: stop the run, or skip the step and go on
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        for key in ("steps", "batch_size", "seq_len", "grad_accum", "loss_chunk", "log_every"):
            _check_int(self, key, low=1)
        for key in ("data_shards", "warmup_steps", "checkpoint_every", "eval_every", "seed"):
            _check_int(self, key, low=0)
        _check_int(self, "keep_checkpoints", low=1)
        _check_int(self, "eval_batches", low=1)
        for key, choices in (("schedule", SCHEDULES), ("nan_policy", NAN_POLICIES)):
            if getattr(self, key) not in choices:
                raise ConfigError(
                    f"{key}={getattr(self, key)!r} is not valid; choose one of {', '.join(choices)}"
                )
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}"
            )
        if self.data_shards and self.batch_size % self.data_shards:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of data_shards={self.data_shards}"
            )
        _check_float(self, "learning_rate", low=0, low_open=True)
        _check_float(self, "min_lr_ratio", low=0, high=1)
        _check_float(self, "beta1", low=0, high=1, high_open=True)
        _check_float(self, "beta2", low=0, high=1, high_open=True)
        _check_float(self, "eps", low=0, low_open=True)
        _check_float(self, "weight_decay", low=0)
        _check_float(self, "clip_norm", low=0, fix="0 turns clipping off")
        for key in ("model_overrides", "mesh"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key}={getattr(self, key)!r} must be a mapping")
        for axis, size in self.mesh.items():
            if not isinstance(size, int) or isinstance(size, bool):
                raise ConfigError(f"mesh.{axis}={size!r} must be an integer (-1 = the rest)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (stored in checkpoints)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        data = values.pop("data", None) or {}
        base = cls(data=data if isinstance(data, DataConfig) else _data_config(data))
        return replace_checked(base, **values)


def load_train_config(name_or_path: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """configs/train-<name>.yaml (or a YAML path) with `key=value` overrides applied."""
    name_or_path = name_or_path or DEFAULT_CONFIG
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"train-{name_or_path}.yaml"
        if not path.is_file():
            names = sorted(p.stem.removeprefix("train-") for p in CONFIG_DIR.glob("train-*.yaml"))
            raise ConfigError(
                f"no training config {str(name_or_path)!r}: give a YAML file path or one of "
                f"{', '.join(names)}"
            )
    values = read_config_file(path)
    sections = {"model": "model_overrides", "data": "data", "mesh": "mesh"}
    for key in ("model_overrides", "data", "mesh"):
        if not isinstance(values.get(key) or {}, dict):
            raise ConfigError(f"{path}: {key} must be a mapping, got {values[key]!r}")
    values["model_overrides"] = dict(values.get("model_overrides") or {})
    values["data"] = dict(values.get("data") or {})
    values["mesh"] = dict(values.get("mesh") or TrainConfig().mesh)
    # `model.dim: 64` in the file and `model.dim=64` on the command line, in that order.
    dotted = {
        k: values.pop(k) for k in list(values) if k.partition(".")[0] in sections and "." in k
    }
    for key, value in [*dotted.items(), *parse_overrides(overrides).items()]:
        section, _, field = key.partition(".")
        if section in sections and field:
            values[sections[section]][field] = value
        else:
            values[key] = value
    return TrainConfig.from_dict(values)


def _data_config(values: dict) -> DataConfig:
    try:
        return DataConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None


def _check_float(config, key, *, low, high=math.inf, low_open=False, high_open=False, fix=""):
    """A finite number in [low, high] (open where asked); ints were made floats by the type
    check."""
    value = getattr(config, key)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    above = number and (value > low if low_open else value >= low)
    below = number and (value < high if high_open else value <= high)
    if not (number and math.isfinite(value) and above and below):
        lower = f"{'>' if low_open else '>='} {low:g}"
        upper = "" if high == math.inf else f" and {'<' if high_open else '<='} {high:g}"
        hint = f" ({fix})" if fix else ""
        raise ConfigError(f"{key}={value!r} must be a finite number {lower}{upper}{hint}")


def _check_int(config, key: str, low: int) -> None:
    value = getattr(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key}={value!r} must be an integer >= {low}")
