"""flash-linear-attention's layout, in and out: the folder `fla.models.YOCOForCausalLM` (and so
transformers' `AutoModelForCausalLM` after `import fla`) loads with `from_pretrained`.

    config.json             fla's YOCOConfig: a gated-retention self-decoder and both decoders'
                            rotary at the official YOCO frequencies (rope_inv_freq="yoco")
    generation_config.json  bos, eos, pad ids of the tokenizer
    model.safetensors       fla's parameter names (model.self_layers.0.attn.q_proj.weight, ...)
    tokenizer.json, tokenizer_config.json   transformers' AutoTokenizer (data/hf_tokenizer.py)
    tokenizer.model         the sentencepiece model itself, for this project

The tensors are the official layout's (export.py), renamed; fla's SwiGLU names the official
fc1/gate/fc2 gate_proj/up_proj/down_proj. Sliding-window self-decoders have no fla equivalent
(fla's "swa" rotates halves at other frequencies). Reading back refuses fla settings this
project does not compute (gated_deltanet self-decoders, fla's rotary frequencies, attnres...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from yoco_jax.config import ModelConfig, from_dict
from yoco_jax.data.tokenizer_resolver import TOKENIZER_FILE
from yoco_jax.errors import CheckpointError, ConfigError
from yoco_jax.export import (
    params_from_state,
    prepare_export,
    read_weights,
    save_weights,
    to_state_dict,
)

GATE_LOGIT_NORMALIZER = 16.0  # the official gate: log_sigmoid(x) / 16
MAX_POSITIONS = 2048  # fla sizes its rotary tables by it; positions past it work as well

_TOP = {
    "embed_tokens.weight": "model.embeddings.weight",
    "layer_norm.weight": "model.norm.weight",
    "output_projection.weight": "lm_head.weight",
    "cross_decoder.kv_layer_norm.weight": "model.shared_kv_builder.kv_norm.weight",
    "cross_decoder.k_proj.weight": "model.shared_kv_builder.k_proj.weight",
    "cross_decoder.v_proj.weight": "model.shared_kv_builder.v_proj.weight",
}
_IN_LAYER = [
    ("mixer_layer_norm.", "attn_norm."),
    ("final_layer_norm.", "mlp_norm."),
    ("mixer.out_proj.", "attn.o_proj."),
    ("mixer.gt_proj.", "attn.gk_proj."),
    ("mixer.", "attn."),
    ("ffn.fc1.", "mlp.gate_proj."),
    ("ffn.gate.", "mlp.up_proj."),
    ("ffn.fc2.", "mlp.down_proj."),
]


def fla_key(official: str) -> str:
    """An official state_dict key -> fla's name for the same tensor."""
    if official in _TOP:
        return _TOP[official]
    stack, index, rest = re.fullmatch(
        r"(self|cross)_decoder\.layers\.(\d+)\.(.+)", official
    ).groups()
    old, new = next((old, new) for old, new in _IN_LAYER if rest.startswith(old))
    return f"model.{stack}_layers.{index}.{new}{rest[len(old) :]}"


def official_key(fla: str) -> str:
    """fla's name -> the official key (a name of neither is returned as it is: unexpected)."""
    top = {new: old for old, new in _TOP.items()}
    match = re.fullmatch(r"model\.(self|cross)_layers\.(\d+)\.(.+)", fla)
    if fla in top or match is None:
        return top.get(fla, fla)
    stack, index, rest = match.groups()
    for old, new in _IN_LAYER:
        if rest.startswith(new):
            return f"{stack}_decoder.layers.{index}.{old}{rest[len(new) :]}"
    return fla


def fla_config(config: ModelConfig, dtype: str, special_ids: dict) -> dict:
    """fla's YOCOConfig (config.json) for our architecture; `special_ids`: bos/eos/pad ids."""
    if config.sliding_window is not None:
        raise ConfigError(
            f"sliding_window={config.sliding_window}: fla has no equivalent of the official "
            "sliding-window self-decoder (its 'swa' rotates halves at other frequencies); "
            "export the official layout instead (--format official)"
        )
    rope = {"rope_theta": config.rope_theta, "rope_inv_freq": "yoco"}
    return {
        "architectures": ["YOCOForCausalLM"],
        "model_type": "yoco",
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_self_decoder_layers": config.half_layers,
        "intermediate_size": config.hidden_dim,
        "hidden_act": "swish",
        "vocab_size": config.vocab_size,
        "norm_eps": config.norm_eps,
        "max_position_embeddings": MAX_POSITIONS,
        "self_decoder_attn": {
            "type": "gated_retention",
            "num_heads": config.n_self_heads,
            "gate_logit_normalizer": GATE_LOGIT_NORMALIZER,
            **rope,
        },
        "cross_decoder_attn": {
            "num_heads": config.n_attn_heads,
            "num_kv_heads": config.n_attn_kv_heads,
            "qkv_bias": False,
            "qk_norm": False,
            **rope,
        },
        "tie_word_embeddings": False,
        "attnres_block_size": None,
        "torch_dtype": dtype,
        "use_cache": True,
        **special_ids,
    }


def write_fla(
    folder,
    config: ModelConfig,
    params,
    dtype: str = "float32",
    tokenizer=None,
    overwrite: bool = False,
) -> Path:
    """Writes fla's layout (module docstring) into a new or empty `folder`; the tokenizer
    files only when `tokenizer` is given."""
    from yoco_jax.data.hf_tokenizer import special_ids, tokenizer_files

    files = tokenizer_files(tokenizer.model_bytes) if tokenizer is not None else {}  # may refuse
    ids = special_ids(tokenizer.model_bytes) if tokenizer is not None else {}
    data = fla_config(config, dtype, ids)  # refuses what fla cannot load, before any writing
    folder = prepare_export(folder, config, dtype, overwrite)
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    generation = {"_from_model_config": True, **ids}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_weights(folder, {fla_key(k): v for k, v in to_state_dict(params).items()}, dtype)
    for name, text in files.items():
        (folder / name).write_text(text)
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER_FILE)
    return folder


def _intermediate_size(data: dict) -> int:
    """fla's GatedMLP width when config.json leaves it out: 2/3 of hidden_ratio * hidden_size,
    rounded up to a multiple of 256."""
    width = int(data["hidden_size"] * (data.get("hidden_ratio") or 4) * 2 / 3)
    return 256 * ((width + 255) // 256)


def _unsupported(data: dict) -> list[str]:
    """fla settings this project does not compute, each with its value."""
    self_attn, cross = data.get("self_decoder_attn") or {}, data.get("cross_decoder_attn") or {}
    found = []
    if self_attn.get("type", "gated_deltanet") != "gated_retention":
        found.append(f"self_decoder_attn.type={self_attn.get('type', 'gated_deltanet')!r}")
    for name, attn in (("self_decoder_attn", self_attn), ("cross_decoder_attn", cross)):
        if attn.get("rope_inv_freq", "fla") != "yoco":
            found.append(f"{name}.rope_inv_freq={attn.get('rope_inv_freq', 'fla')!r}")
        for key in ("qkv_bias", "qk_norm"):
            if attn.get(key):
                found.append(f"{name}.{key}=true")
    if self_attn.get("gate_logit_normalizer", 16.0) != GATE_LOGIT_NORMALIZER:
        found.append(
            f"self_decoder_attn.gate_logit_normalizer={self_attn['gate_logit_normalizer']}"
        )
    if self_attn.get("rope_theta", 1e4) != cross.get("rope_theta", 1e4):
        found.append("different rope_theta in the two decoders")
    if data.get("attnres_block_size") is not None:
        found.append(f"attnres_block_size={data['attnres_block_size']}")
    if data.get("hidden_act", "swish") != "swish":
        found.append(f"hidden_act={data['hidden_act']!r}")
    layers, self_layers = data.get("num_hidden_layers", 21), data.get("num_self_decoder_layers", 10)
    if layers != 2 * self_layers:
        found.append(f"num_self_decoder_layers={self_layers} of num_hidden_layers={layers}")
    return found


def read_fla(folder, **overrides) -> tuple[ModelConfig, dict]:
    """Reads fla's layout -> (config, params); CheckpointError for a setting we do not compute
    (it would load, but compute another model)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON: {e}") from e
    unsupported = _unsupported(data)
    if unsupported:
        raise CheckpointError(
            f"{folder} is an fla YOCO this project does not compute ({'; '.join(unsupported)}): "
            "only gated-retention self-decoders with rope_inv_freq='yoco' in both decoders, "
            "half the layers each, load here"
        )
    self_attn, cross = data.get("self_decoder_attn") or {}, data.get("cross_decoder_attn") or {}
    config = from_dict(
        {
            "dim": data["hidden_size"],
            "n_layers": data["num_hidden_layers"],
            "hidden_dim": data.get("intermediate_size") or _intermediate_size(data),
            "n_self_heads": self_attn.get("num_heads", 6),
            "n_attn_heads": cross.get("num_heads", 32),
            "n_attn_kv_heads": cross.get("num_kv_heads", cross.get("num_heads", 32)),
            "vocab_size": data.get("vocab_size", 32000),
            "norm_eps": data.get("norm_eps", 1e-6),
            "rope_theta": self_attn.get("rope_theta", 1e4),
        },
        **overrides,
    )
    state = read_weights(folder)
    if data.get("tie_word_embeddings") and "model.embeddings.weight" in state:
        state.setdefault("lm_head.weight", state["model.embeddings.weight"])  # saved once if tied
    return config, params_from_state(config, {official_key(k): v for k, v in state.items()})
