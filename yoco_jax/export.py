"""The official PyTorch layout, in and out: a folder with `params.json` and `model.safetensors`.

Parameter names are the official `state_dict` keys: our linen path with `layers_N` written
`layers.N` and the leaf renamed `weight` (Linear kernels transposed to torch's `[out, in]`).
An official PyTorch state_dict (`*.pth`) is read when torch is installed. An export also carries
the model's sentencepiece `tokenizer.model`, so the folder is complete for inference.

    yoco-export <training output or official folder> <new folder> [--save-dtype bfloat16]
    (the command: yoco_jax/cli/export.py; this module only converts)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from yoco_jax.config import ARCHITECTURE_FIELDS, ModelConfig, from_dict
from yoco_jax.data.tokenizer_resolver import TOKENIZER_FILE
from yoco_jax.errors import CheckpointError, ConfigError
from yoco_jax.model.scan import stack_layers, unstack_layers

# YOCOArgs fields written to params.json: the architecture but `arch` (ours).
OFFICIAL_FIELDS = tuple(k for k in ARCHITECTURE_FIELDS if k != "arch")


def _official_key(path: tuple[str, ...]) -> str:
    name = ".".join(path[:-1])
    return re.sub(r"layers_(\d+)", r"layers.\1", name) + ".weight"


def to_state_dict(params) -> dict[str, np.ndarray]:
    """Our params (nested, unboxed; either layer layout) -> {official key: numpy array in torch
    layout}."""
    out = {}
    for path, value in traverse_util.flatten_dict(unstack_layers(params)).items():
        value = np.asarray(jax.device_get(value))
        out[_official_key(path)] = value.T if path[-1] == "kernel" else value
    return out


def from_state_dict(state: dict[str, np.ndarray], template) -> dict:
    """{official key: array} -> params shaped like `template` (a pytree of arrays or shapes)."""
    flat = {}
    missing, wrong = [], []
    for path, like in traverse_util.flatten_dict(template).items():
        key = _official_key(path)
        if key not in state:
            missing.append(key)
            continue
        value = np.asarray(state[key])
        if not jax.numpy.issubdtype(value.dtype, jax.numpy.floating):
            raise CheckpointError(f"tensor {key} holds {value.dtype} numbers: weights are floats")
        if not np.isfinite(value.astype(np.float32)).all():
            raise CheckpointError(f"tensor {key} holds NaN or infinite values: the file is damaged")
        value = value.T if path[-1] == "kernel" else value
        if value.shape != tuple(like.shape):
            expected = like.shape[::-1] if path[-1] == "kernel" else like.shape
            wrong.append(f"{key}: file {tuple(state[key].shape)}, expected {tuple(expected)}")
        flat[path] = value.astype(like.dtype)
    unexpected = sorted(
        set(state) - {_official_key(p) for p in traverse_util.flatten_dict(template)}
    )
    problems = []
    if missing:
        problems.append(
            f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:8]))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}")
    if problems:
        raise CheckpointError(
            "checkpoint does not match the config (check params.json against the weights): "
            + " | ".join(problems)
        )
    return traverse_util.unflatten_dict(flat)


def official_params_json(config: ModelConfig) -> dict:
    data = {k: getattr(config, k) for k in OFFICIAL_FIELDS}
    if data["sliding_window"] is None:
        del data["sliding_window"]
    return data


def check_export_target(folder, overwrite: bool = False) -> None:
    """Raises unless `folder` can take an export: new or empty (or `overwrite`), and never a
    training run folder (its checkpoints and the export would be two models in one place)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"export target {folder} is a file: give a folder")
    if (folder / "checkpoints").exists():  # train.checkpoint.CHECKPOINT_DIR
        raise ValueError(
            f"{folder} is a training run folder (it has checkpoints/): export into another folder"
        )
    resolved = folder.resolve()
    for run in resolved.parents:  # even with --force: never over a run's checkpoints
        if (run / "checkpoints").is_dir() and resolved.is_relative_to(run / "checkpoints"):
            raise ValueError(
                f"{folder} lies inside the checkpoints of the training run {run}: export into "
                "a folder outside it"
            )
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(
            f"export target {folder} is not empty: give a new folder, or --force (overwrite=True) "
            "to replace the export there"
        )


# Every file an export writes, in either layout (official, or fla's: yoco_jax/fla_layout.py):
# replacing an export clears them all, so no file of the old one pairs with the new weights.
EXPORT_FILES = (
    "params.json",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    TOKENIZER_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
)


def prepare_export(folder, config: ModelConfig, dtype: str, overwrite: bool) -> Path:
    """Checks an export (YOCO, float32 or bfloat16, a usable target: check_export_target) and
    returns the folder, created, with an earlier export's files removed."""
    if config.arch != "yoco":
        raise ConfigError("the PyTorch layouts exist for YOCO models only (arch=yoco)")
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"export dtype={dtype!r}: choose float32 or bfloat16")
    folder = Path(folder)
    check_export_target(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        (folder / name).unlink(missing_ok=True)
    return folder


def save_weights(folder: Path, state: dict[str, np.ndarray], dtype: str) -> None:
    """`model.safetensors` of a torch-layout state in `dtype`, as readable as the folder's
    other files (safetensors writes 0600)."""
    from safetensors.numpy import save_file

    np_dtype = np.dtype("float32") if dtype == "float32" else jax.numpy.bfloat16
    state = {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in state.items()}
    weights = folder / "model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})  # transformers requires "pt"
    os.chmod(weights, stat.S_IMODE(folder.stat().st_mode) & 0o666)


def write_official(
    folder,
    config: ModelConfig,
    params,
    dtype: str = "float32",
    tokenizer=None,
    overwrite: bool = False,
) -> Path:
    """Writes `params.json`, `model.safetensors` (float32 or bfloat16) and, when given, the
    tokenizer as `tokenizer.model` into `folder` (see check_export_target)."""
    folder = prepare_export(folder, config, dtype, overwrite)
    (folder / "params.json").write_text(json.dumps(official_params_json(config), indent=2) + "\n")
    save_weights(folder, to_state_dict(params), dtype)
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER_FILE)  # the exact model bytes, even if unsaved
    return folder


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """{key: array} of a folder's model.safetensors, or of its one *.pth (with torch)."""
    st = folder / "model.safetensors"
    pths = sorted(folder.glob("*.pth"))
    if st.exists():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{st} is not a readable safetensors file: {e}") from e
    if len(pths) == 1:
        pth = pths[0]
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(
                f"{pth} needs torch to read: pip install 'yoco-jax[torch]', or convert it to "
                "model.safetensors"
            ) from e
        try:
            state = torch.load(str(pth), map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several types for truncated or foreign files
            raise CheckpointError(f"{pth} is not a readable PyTorch checkpoint: {e}") from e
        state = state.get("model", state)  # a bare state_dict, as the official code saves
        # Floats widen (numpy has no bfloat16); integers stay integers, for the check above.
        return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
    raise CheckpointError(
        f"{folder} holds no weights: expected model.safetensors, or one .pth state_dict "
        f"(found {len(pths)} .pth files)"
    )


def read_official(folder, **overrides) -> tuple[ModelConfig, dict]:
    """Reads an official-layout folder -> (config, params); overrides e.g. dtype="bfloat16"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not (folder / "params.json").exists():
        raise CheckpointError(f"{folder} has no params.json (the official YOCOArgs fields)")
    try:
        data = json.loads((folder / "params.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{folder / 'params.json'} is not valid JSON (unreadable): {e}"
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{folder / 'params.json'} holds a JSON {type(data).__name__}, not an object of "
            "the model's settings"
        )
    config = from_dict(data, **overrides)
    return config, params_from_state(config, read_weights(folder))


def params_from_state(config: ModelConfig, state: dict[str, np.ndarray]):
    """{official key: array} -> params of `config` (its layer layout); CheckpointError naming
    the missing, unexpected and misshapen keys."""
    from yoco_jax.model import build_model

    unrolled = dataclasses.replace(config, scan_layers=False)  # the file's layout
    template = jax.eval_shape(
        lambda: build_model(unrolled).init(jax.random.key(0), np.zeros((1, 1), np.int32))
    )["params"]
    params = from_state_dict(state, nn.unbox(template))
    return stack_layers(params) if config.scan_layers else params
