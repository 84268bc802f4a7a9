"""Configs (files, overrides, errors) and the official layout (round trip, bad folders)."""

import json

import jax
import numpy as np
import pytest
import yaml

import yoco_jax
from yoco_jax.config import ConfigError, available_configs
from yoco_jax.config_files import parse_overrides


@pytest.mark.parametrize("name", available_configs())
def test_every_config_file_loads(name):
    cfg = yoco_jax.get_config(name)
    assert cfg.arch == ("transformer" if name.startswith("transformer") else "yoco")


def test_yoco_3b_is_the_official_arch():
    cfg = yoco_jax.get_config("yoco-3b")
    official = dict(
        dim=3072, hidden_dim=8192, n_layers=26, n_self_heads=24, n_attn_heads=24, n_attn_kv_heads=8
    )
    assert {k: getattr(cfg, k) for k in official} == official
    assert yoco_jax.get_config("yoco-3b-1m").rope_theta == 80_000_000.0


def test_overrides_parse_and_apply():
    overrides = parse_overrides(
        ["dim=128", "sliding_window=64", "dtype=bfloat16", "rope_theta=1e6"]
    )
    cfg = yoco_jax.get_config("yoco-tiny", **overrides)
    assert (cfg.dim, cfg.sliding_window, cfg.dtype, cfg.rope_theta) == (128, 64, "bfloat16", 1e6)


@pytest.mark.parametrize(
    "overrides,words",
    [
        ({"dimm": 8}, ["unknown config key 'dimm'", "Did you mean 'dim'"]),
        ({"dtype": "fp8"}, ["dtype='fp8'", "float32, bfloat16"]),
        ({"attention_impl": "cuda"}, ["attention_impl", "xla, pallas"]),
        ({"n_layers": 3}, ["n_layers=3 must be even"]),
        ({"n_attn_kv_heads": 3}, ["multiple of n_attn_kv_heads=3"]),
        ({"dim": "big"}, ["dim='big'", "expected int"]),
        ({"chunk_size": 0}, ["chunk_size=0 must be a positive integer"]),
    ],
)
def test_bad_config_errors_name_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        yoco_jax.get_config("yoco-tiny", **overrides)
    for word in words:
        assert word in str(err.value)


def test_unknown_config_name_lists_choices():
    with pytest.raises(ConfigError, match="yoco-tiny"):
        yoco_jax.get_config("yoco-huge")


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["dim"])


@pytest.fixture(scope="module")
def tiny():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", n_layers=2), seed=3)


def test_official_round_trip_is_exact(tiny, tmp_path):
    tiny.save_official(tmp_path)
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["dim"] == tiny.config.dim and "chunk_size" not in params
    loaded = yoco_jax.load_pretrained(tmp_path, chunk_size=tiny.config.chunk_size)
    assert loaded.config == tiny.config
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(tiny.params)):
        np.testing.assert_array_equal(a, b)


def test_official_keys_and_torch_layout(tiny, tmp_path):
    from safetensors.numpy import load_file

    tiny.save_official(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    d, kv = tiny.config.dim, tiny.config.n_attn_kv_heads * tiny.config.attn_head_dim
    assert state["self_decoder.layers.0.mixer.q_proj.weight"].shape == (d, d)
    assert state["self_decoder.layers.0.mixer.gt_proj.weight"].shape == (
        tiny.config.n_self_heads,
        d,
    )
    assert state["cross_decoder.k_proj.weight"].shape == (kv, d)
    assert state["embed_tokens.weight"].shape == (tiny.config.vocab_size, d)
    assert state["output_projection.weight"].shape == (tiny.config.vocab_size, d)
    np.testing.assert_array_equal(
        state["cross_decoder.layers.0.ffn.fc1.weight"],
        np.asarray(tiny.params["cross_decoder"]["layers_0"]["ffn"]["fc1"]["kernel"]).T,
    )


def test_bfloat16_export_within_bf16_tolerance(tiny, tmp_path):
    tiny.save_official(tmp_path, dtype="bfloat16")
    loaded = yoco_jax.load_pretrained(tmp_path, chunk_size=tiny.config.chunk_size)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(tiny.params)):
        np.testing.assert_allclose(a, b, rtol=2**-8, atol=1e-6)


def _broken(tmp_path, tiny, action):
    tiny.save_official(tmp_path)
    action(tmp_path)
    return tmp_path


def test_bad_checkpoint_folders(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    with pytest.raises(yoco_jax.CheckpointError, match="does not exist"):
        yoco_jax.load_pretrained(tmp_path / "nowhere")

    (tmp_path / "a").mkdir()
    with pytest.raises(yoco_jax.CheckpointError, match="no params.json"):
        yoco_jax.load_pretrained(tmp_path / "a")  # not a training output folder either

    folder = _broken(tmp_path / "b", tiny, lambda f: (f / "model.safetensors").unlink())
    with pytest.raises(yoco_jax.CheckpointError, match="holds no weights"):
        yoco_jax.load_pretrained(folder)

    folder = _broken(tmp_path / "c", tiny, lambda f: (f / "model.safetensors").write_bytes(b"xx"))
    with pytest.raises(yoco_jax.CheckpointError, match="not a readable safetensors"):
        yoco_jax.load_pretrained(folder)

    def drop_key(f):
        state = load_file(str(f / "model.safetensors"))
        del state["cross_decoder.v_proj.weight"]
        save_file(state, str(f / "model.safetensors"))

    with pytest.raises(yoco_jax.CheckpointError, match="missing keys: cross_decoder.v_proj"):
        yoco_jax.load_pretrained(_broken(tmp_path / "d", tiny, drop_key))

    def wrong_dim(f):
        params = json.loads((f / "params.json").read_text())
        (f / "params.json").write_text(json.dumps({**params, "hidden_dim": 64}))

    with pytest.raises(yoco_jax.CheckpointError, match="wrong shapes: .*ffn.fc1.weight"):
        yoco_jax.load_pretrained(_broken(tmp_path / "e", tiny, wrong_dim))

    folder = _broken(tmp_path / "f", tiny, lambda f: (f / "params.json").write_text("{dim: "))
    with pytest.raises(yoco_jax.CheckpointError, match="not valid JSON"):
        yoco_jax.load_pretrained(folder)


def test_model_rejects_bad_tokens(tiny):
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\)"):
        tiny.logits(np.array([[1, 2, 256]]))
    with pytest.raises(ValueError, match="2-D int array"):
        tiny.logits(np.array([1, 2, 3]))


def test_yaml_file_path_config(tmp_path):
    path = tmp_path / "mine.yaml"
    tiny = yaml.safe_load((yoco_jax.config.CONFIG_DIR / "yoco-tiny.yaml").read_text())
    path.write_text(yaml.safe_dump({**tiny, "dim": 32}))
    assert yoco_jax.get_config(path).dim == 32


def test_reads_an_official_pth_state_dict(tiny, tmp_path):
    """The official code saves a bare state_dict with torch.save (bf16 weights here)."""
    import torch
    from safetensors.numpy import load_file

    tiny.save_official(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    torch.save(
        {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()},
        tmp_path / "yoco.pth",
    )
    loaded = yoco_jax.load_pretrained(tmp_path, chunk_size=tiny.config.chunk_size)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(tiny.params)):
        np.testing.assert_allclose(a, b, rtol=2**-8, atol=1e-6)
    (tmp_path / "yoco.pth").write_bytes(b"not a zip")
    with pytest.raises(yoco_jax.CheckpointError, match="not a readable PyTorch checkpoint"):
        yoco_jax.load_pretrained(tmp_path)
