"""The small public API: a Model is a config plus its parameters."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.config import ModelConfig, get_config, replace_checked
from yoco_jax.data.tokenizer_resolver import find_tokenizer
from yoco_jax.errors import CheckpointError, ConfigError
from yoco_jax.model import build_model

# Config fields a loaded model may change: how it computes, not which parameters it has.
RUNTIME_OVERRIDES = ("dtype", "attention_impl", "remat", "chunk_size")


@dataclasses.dataclass
class Model:
    """A YOCO (or baseline) model: `config`, `params` (a plain pytree of arrays) and, when one
    is known, the `tokenizer` that turns text prompts into tokens."""

    config: ModelConfig
    params: dict
    tokenizer: object = dataclasses.field(default=None, repr=False)

    @property
    def module(self) -> nn.Module:
        return build_model(self.config)

    def check_tokens(self, tokens) -> jnp.ndarray:
        """int32 [B, T] tokens, or a clear error naming what is wrong with them."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(
                f"tokens must be a 2-D int array [batch, time], got shape {tokens.shape}"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}) (the vocabulary); got "
                f"min {tokens.min()}, max {tokens.max()}"
            )
        return jnp.asarray(tokens, jnp.int32)

    def logits(self, tokens) -> jax.Array:
        """float32 logits [B, T, vocab] for int tokens [B, T]."""
        return _logits(self.config, self.params, self.check_tokens(tokens))

    def generate(self, prompts, max_new_tokens: int = 32, **kwargs):
        """Completions of token-list or text prompts: temperature, top_k, top_p, stop, seed...
        (see `yoco_jax.inference.generate`)."""
        from yoco_jax.inference import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    def prefill(self, prompts, **kwargs):
        """Runs prompts into a fresh cache (see `yoco_jax.inference.prefill`)."""
        from yoco_jax.inference import prefill

        return prefill(self, prompts, **kwargs)

    def decode(self, state, **kwargs):
        """Continues a decode state (see `yoco_jax.inference.decode`)."""
        from yoco_jax.inference import decode

        return decode(self, state, **kwargs)

    def save_official(self, path, dtype: str = "float32", overwrite: bool = False) -> Path:
        """Writes the official PyTorch layout (params.json + model.safetensors) and the
        tokenizer (tokenizer.model) when the model has one, into a new or empty folder
        (`overwrite=True` replaces an earlier export there)."""
        from yoco_jax.export import write_official

        return write_official(path, self.config, self.params, dtype, self.tokenizer, overwrite)

    def replace(self, **overrides) -> Model:
        """The same weights under a config with runtime `overrides` (RUNTIME_OVERRIDES)."""
        check_runtime_overrides(overrides)
        return Model(replace_checked(self.config, **overrides), self.params, self.tokenizer)


@jax.jit(static_argnums=0)
def _logits(config: ModelConfig, params, tokens):
    return build_model(config).apply({"params": params}, tokens)


def init(config: ModelConfig | str, seed: int = 0) -> Model:
    """A freshly initialized model (float32 params unless config.param_dtype says otherwise)."""
    config = get_config(config) if isinstance(config, str) else config
    variables = jax.jit(build_model(config).init)(
        jax.random.key(seed), jnp.zeros((1, 1), jnp.int32)
    )
    return Model(config, nn.unbox(variables["params"]))


def check_runtime_overrides(overrides: dict) -> None:
    """Raises for an override of a saved model's field that shapes its parameters."""
    fixed = sorted(set(overrides) - set(RUNTIME_OVERRIDES))
    if fixed:
        raise ConfigError(
            f"cannot override {', '.join(fixed)} of a saved model: it fixes the parameters' shapes "
            f"or values; only {', '.join(RUNTIME_OVERRIDES)} may change (for another shape, "
            "build a new model with yoco_jax.init)"
        )


def load_pretrained(path: str | os.PathLike, **overrides) -> Model:
    """Loads a training output folder of this project (its latest checkpoint) or an
    official-layout folder (params.json + model.safetensors / *.pth), with the folder's
    tokenizer.model when it has one (never a guessed one). A run folder's checkpoints win over
    a params.json beside them. `overrides`: runtime fields only (RUNTIME_OVERRIDES).
    Reads only: nothing is created in `path`."""
    check_runtime_overrides(overrides)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file: give the folder of a training run or of an exported model"
        )
    if _has_checkpoints(path):
        config, params = _load_run(path)
        config = replace_checked(config, **overrides)
    elif (path / "params.json").exists():
        from yoco_jax.export import read_official

        config, params = read_official(path, **overrides)
    else:
        raise CheckpointError(
            f"{path} is neither an official-layout folder (no params.json) nor a training "
            "output folder (no checkpoints/ with a saved step)"
        )
    return Model(config, params, find_tokenizer(path, config.vocab_size))


def _has_checkpoints(path: Path) -> bool:
    from yoco_jax.train.checkpoint import CHECKPOINT_DIR

    folder = path / CHECKPOINT_DIR
    return folder.is_dir() and any(folder.iterdir())


def _load_run(path: Path):
    """(config, params) of a run folder's latest checkpoint, or a one-line CheckpointError."""
    from yoco_jax.train.checkpoint import load_params

    try:
        return load_params(str(path))
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises KeyError, ValueError, OSError... for damaged steps
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"the checkpoint in {path} cannot be read ({type(e).__name__}: {detail}); "
            "check the folder, or load an earlier step"
        ) from e
