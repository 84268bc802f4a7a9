"""The model computes the official YOCO: against an independent float64 NumPy evaluation of
random official-layout weights, and against logits the official PyTorch code produced."""

import json

import numpy as np
import pytest
from numpy_yoco import logits as numpy_logits
from numpy_yoco import random_state_dict
from safetensors.numpy import save_file

import yoco_jax

CASES = {
    # gRet, GQA 4 query heads over 2 kv heads, chunk 8 so T=21 spans 3 chunks with a remainder.
    "gret-gqa": dict(
        dim=32,
        n_layers=4,
        hidden_dim=48,
        n_self_heads=2,
        n_attn_heads=4,
        n_attn_kv_heads=2,
        vocab_size=61,
        rope_theta=10000.0,
        norm_eps=1e-5,
    ),
    # gRet, GQA ratio 8, odd head counts elsewhere.
    "gret-gqa8": dict(
        dim=48,
        n_layers=2,
        hidden_dim=40,
        n_self_heads=3,
        n_attn_heads=8,
        n_attn_kv_heads=1,
        vocab_size=37,
        rope_theta=500.0,
        norm_eps=1e-6,
    ),
    # sliding window 5, shorter than the sequence.
    "swa": dict(
        dim=24,
        n_layers=2,
        hidden_dim=40,
        n_self_heads=2,
        n_attn_heads=2,
        n_attn_kv_heads=1,
        vocab_size=40,
        rope_theta=10000.0,
        norm_eps=1e-5,
        sliding_window=5,
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def official_folder(request, tmp_path_factory):
    params = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    weights = random_state_dict(params, seed=len(request.param))
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "params.json").write_text(json.dumps(params))
    return folder, params, weights


def relative_error(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


def test_logits_match_float64_numpy(official_folder):
    folder, params, weights = official_folder
    model = yoco_jax.load_pretrained(folder, chunk_size=8)
    tokens = np.random.default_rng(0).integers(0, params["vocab_size"], (2, 21))
    expected = numpy_logits(params, weights, tokens)
    assert relative_error(model.logits(tokens), expected) < 1e-4


def test_chunk_size_does_not_change_logits(official_folder):
    folder, params, _ = official_folder
    tokens = np.random.default_rng(1).integers(0, params["vocab_size"], (1, 19))
    a = yoco_jax.load_pretrained(folder, chunk_size=4).logits(tokens)
    b = yoco_jax.load_pretrained(folder, chunk_size=64).logits(tokens)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["official-gret-gqa", "official-swa"])
def test_logits_match_official_pytorch(name, testdata):
    expected = np.load(testdata / name / "expected.npz")
    model = yoco_jax.load_pretrained(testdata / name)
    assert relative_error(model.logits(expected["tokens"]), expected["logits"]) < 1e-4


def test_bfloat16_stays_close_to_float32(official_folder):
    folder, params, _ = official_folder
    tokens = np.random.default_rng(2).integers(0, params["vocab_size"], (2, 13))
    f32 = yoco_jax.load_pretrained(folder).logits(tokens)
    bf16 = yoco_jax.load_pretrained(folder, dtype="bfloat16").logits(tokens)
    assert relative_error(bf16, np.asarray(f32, np.float64)) < 5e-2


def test_rotary_inverse_frequencies_follow_torch_float32():
    """torch.linspace(0, 1, n) in float32 fills the second half from the end: check both ends."""
    from yoco_jax.model.rotary import inverse_frequencies

    inv = inverse_frequencies(256, 80_000_000.0)
    assert inv.dtype == np.float32 and inv[0] == 1.0
    assert inv[-1] == np.float32(1.0) / np.float32(80_000_000.0)
    exact = 80_000_000.0 ** -np.linspace(0, 1, 128)
    np.testing.assert_allclose(inv, exact, rtol=2e-6)
