"""The small public API: a Model is a config plus its parameters (and tokenizer), with methods.

This is the facade above inference and export: the methods delegate to them, and nothing below
imports this module (they receive the `ModelHandle` a Model is).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from yoco_jax import inference
from yoco_jax.config import ModelConfig, get_config
from yoco_jax.export import write_official
from yoco_jax.inference import placement
from yoco_jax.model import build_model
from yoco_jax.model.handle import ModelHandle
from yoco_jax.pretrained import load_handle, with_runtime

__all__ = ["Model", "init", "load_pretrained"]


@dataclasses.dataclass
class Model(ModelHandle):
    """A YOCO (or baseline) model: `config`, `params` (a plain pytree of arrays) and, when one
    is known, the `tokenizer` that turns text prompts into tokens."""

    @property
    def module(self) -> nn.Module:
        return build_model(self.config)

    def logits(self, tokens, *, segment_ids=None, mesh: Mesh | None = None) -> jax.Array:
        """float32 logits [B, T, vocab] for int tokens [B, T]. `segment_ids` [B, T] (1, 2, ...
        per packed document, 0 on padding): every document computed as if it were alone
        (positions restart, no state or attention across documents). `mesh`
        (`yoco_jax.sharding.make_mesh`): rows over its data axes, the sequence split along its
        length over `context`, as in training."""
        tokens = self.check_tokens(tokens)
        if segment_ids is not None:
            segment_ids = _check_segment_ids(segment_ids, tokens.shape)
        with placement.use(mesh):
            params = placement.place_params(self.config, self.params, mesh)
            return _logits(self.config, params, tokens, segment_ids, mesh)

    def generate(self, prompts, max_new_tokens: int = 32, *, mesh: Mesh | None = None, **kwargs):
        """Completions of token-list or text prompts: temperature, top_k, top_p, stop, seed...
        (see `yoco_jax.inference.generate`). `mesh` (`yoco_jax.sharding.make_mesh`): rows over
        its data axes, prompts and the K/V cache split along their length over `context`."""
        return inference.generate(self, prompts, max_new_tokens, mesh=mesh, **kwargs)

    def prefill(self, prompts, *, mesh: Mesh | None = None, **kwargs):
        """Runs prompts into a fresh cache (see `yoco_jax.inference.prefill`); under a `mesh`
        the returned cache stays split along its length over `context`."""
        return inference.prefill(self, prompts, mesh=mesh, **kwargs)

    def decode(self, state, *, mesh: Mesh | None = None, **kwargs):
        """Continues a decode state (see `yoco_jax.inference.decode`; `mesh` defaults to the
        one its cache lives on)."""
        return inference.decode(self, state, mesh=mesh, **kwargs)

    def save_official(self, path, dtype: str = "float32", overwrite: bool = False) -> Path:
        """Writes the official PyTorch layout (params.json + model.safetensors) and the
        tokenizer (tokenizer.model) when the model has one, into a new or empty folder
        (`overwrite=True` replaces an earlier export there)."""
        return write_official(path, self.config, self.params, dtype, self.tokenizer, overwrite)

    def save_fla(self, path, dtype: str = "float32", overwrite: bool = False) -> Path:
        """Writes flash-linear-attention's layout (config.json, model.safetensors with fla's
        names, generation_config.json, Hugging Face tokenizer files): a folder that
        `fla.models.YOCOForCausalLM.from_pretrained` loads (yoco_jax/fla_layout.py)."""
        from yoco_jax.fla_layout import write_fla

        return write_fla(path, self.config, self.params, dtype, self.tokenizer, overwrite)

    def replace(self, **overrides) -> Model:
        """The same weights under other runtime settings (config.RUNTIME_FIELDS: dtype,
        attention_impl, chunk_size, kernel options...; a new param_dtype casts the weights)."""
        return Model(*with_runtime(self.config, self.params, **overrides), self.tokenizer)


def _check_segment_ids(segment_ids, shape: tuple[int, int]) -> np.ndarray:
    """int32 segment ids shaped like the tokens, or a clear error."""
    segment_ids = np.asarray(segment_ids)
    if segment_ids.shape != shape or not np.issubdtype(segment_ids.dtype, np.integer):
        raise ValueError(
            f"segment_ids must be integers shaped like the tokens {shape}, got "
            f"{segment_ids.dtype} {segment_ids.shape}"
        )
    return segment_ids.astype(np.int32)


@jax.jit(static_argnums=(0, 4))
def _logits(config: ModelConfig, params, tokens, segment_ids, mesh):  # mesh: a cache key
    return build_model(config).apply({"params": params}, tokens, segment_ids=segment_ids)


def init(config: ModelConfig | str, seed: int = 0) -> Model:
    """A freshly initialized model (float32 params unless config.param_dtype says otherwise)."""
    config = get_config(config) if isinstance(config, str) else config
    variables = jax.jit(build_model(config).init)(
        jax.random.key(seed), jnp.zeros((1, 1), jnp.int32)
    )
    return Model(config, nn.unbox(variables["params"]))


def load_pretrained(
    path: str | os.PathLike, *, allow_unverified: bool = False, **overrides
) -> Model:
    """Loads a training output folder of this project (its latest checkpoint), an
    official-layout folder (params.json + model.safetensors / *.pth) or an fla-layout one
    (config.json + model.safetensors: `Model.save_fla`'s), with the folder's
    tokenizer.model when it has one (never a guessed one). A run folder's checkpoints win over
    a params.json beside them. `overrides`: runtime fields only (config.RUNTIME_FIELDS).
    A checkpoint step without checksums cannot be verified: it is refused (CheckpointError)
    unless `allow_unverified=True`, which loads it with a warning. Reads only: nothing is
    created in `path`."""
    handle = load_handle(path, allow_unverified=allow_unverified, **overrides)
    return Model(handle.config, handle.params, handle.tokenizer)
