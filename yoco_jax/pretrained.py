"""Loading a saved model: a training run folder (its latest intact checkpoint), an
official-layout folder (params.json + model.safetensors / *.pth) or flash-linear-attention's
layout (config.json + model.safetensors: fla_layout.py), with the folder's tokenizer.

`yoco_jax.load_pretrained` (api.py) wraps this in a `Model`; inference, evaluation and serving
use `load_handle` and the `ModelHandle` it returns.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import jax

from yoco_jax.config import ARCHITECTURE_FIELDS, RUNTIME_FIELDS, ModelConfig, replace_checked
from yoco_jax.data.tokenizer_resolver import find_tokenizer
from yoco_jax.errors import CheckpointError, ConfigError
from yoco_jax.export import read_official
from yoco_jax.model.handle import ModelHandle
from yoco_jax.model.scan import to_layout


def check_runtime_overrides(overrides: dict) -> None:
    """Raises for an override of a saved model's architecture (what its parameters are)."""
    fixed = sorted(set(overrides) - set(RUNTIME_FIELDS))
    unknown = [key for key in fixed if key not in ARCHITECTURE_FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], RUNTIME_FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown setting {unknown[0]!r}{hint} The runtime settings of a saved model are: "
            f"{', '.join(RUNTIME_FIELDS)}"
        )
    if fixed:
        raise ConfigError(
            f"cannot override {', '.join(fixed)} of a saved model: it fixes the parameters' shapes "
            f"or values; only {', '.join(RUNTIME_FIELDS)} may change (for another shape, "
            "build a new model with yoco_jax.init)"
        )


def with_runtime(config: ModelConfig, params, **overrides) -> tuple[ModelConfig, Any]:
    """(config, params) under other runtime settings (config.RUNTIME_FIELDS); a new
    param_dtype casts the parameters, a new scan_layers changes their layer layout."""
    check_runtime_overrides(overrides)
    new = replace_checked(config, **overrides)
    if new.param_dtype != config.param_dtype:
        params = jax.tree.map(lambda x: x.astype(new.param_dtype), params)
    if new.scan_layers != config.scan_layers:
        params = to_layout(params, new.scan_layers)
    return new, params


def load_handle(
    path: str | os.PathLike, *, allow_unverified: bool = False, **overrides
) -> ModelHandle:
    """Loads a training output folder of this project (its latest checkpoint), an
    official-layout or an fla-layout folder, with the folder's tokenizer.model when it has one
    (never a guessed one). A run folder's checkpoints win over a params.json beside them.
    `overrides`: runtime fields only (config.RUNTIME_FIELDS). A checkpoint step without
    checksums (deleted, or saved before they existed) is refused unless `allow_unverified`
    (then loaded with a warning). Reads only: nothing is created in `path`."""
    check_runtime_overrides(overrides)  # before the (slow) load
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file: give the folder of a training run or of an exported model"
        )
    if _has_checkpoints(path):
        config, params = with_runtime(*_load_run(path, allow_unverified), **overrides)
    elif (path / "params.json").exists():
        config, params = read_official(path, **overrides)
    elif is_fla_folder(path):
        from yoco_jax.fla_layout import read_fla

        config, params = read_fla(path, **overrides)
    else:
        raise CheckpointError(
            f"{path} is neither an exported model (no params.json, no config.json of an fla "
            "YOCO) nor a training output folder (no checkpoints/ with a saved step)"
        )
    return ModelHandle(config, params, find_tokenizer(path, config.vocab_size))


def is_fla_folder(path: Path) -> bool:
    """Whether `path` holds a config.json of fla's YOCO (model_type "yoco")."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "yoco"
    except (OSError, ValueError, AttributeError):
        return False


def _has_checkpoints(path: Path) -> bool:
    from yoco_jax.train.checkpoint import CHECKPOINT_DIR  # orbax loads only when needed

    folder = path / CHECKPOINT_DIR
    return folder.is_dir() and any(folder.iterdir())


def _load_run(path: Path, allow_unverified: bool):
    """(config, params) of a run folder's latest checkpoint, or a one-line CheckpointError."""
    from yoco_jax.train.load import load_params

    try:
        return load_params(str(path), allow_unverified=allow_unverified)
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises KeyError, ValueError, OSError... for damaged steps
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"the checkpoint in {path} cannot be read ({type(e).__name__}: {detail}); "
            "check the folder, or load an earlier step"
        ) from e
