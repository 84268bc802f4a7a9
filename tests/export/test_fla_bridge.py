"""The bridge to PyTorch (issue 22): `yoco-export --format fla` on a briefly trained run loads
strictly in flash-linear-attention's own YOCOForCausalLM and computes our logits and greedy
tokens; transformers' AutoTokenizer of the folder encodes real text exactly as our
sentencepiece model; the folder loads back here bit-equal; what fla cannot take, or we cannot
compute, is refused in one line.

fla, transformers and triton are not dependencies of the project: .ci/run installs them into a
side folder named by YOCO_FLA_SITE. fla's Triton kernels cannot run on a CPU, so its ops run as
plain PyTorch here (bench/fla_reference.py); the GPU run: docs/pytorch.md."""

import itertools
import json
import os
import sys
import sysconfig
from pathlib import Path

import jax
import numpy as np
import pytest

import yoco_jax
from yoco_jax.cli.export import main as export_main
from yoco_jax.cli.train import main as train_main
from yoco_jax.data.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # a training run and fla's torch model: not in `-m "not slow"`

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TEXTS = ["difflib.py", "json/decoder.py", "encodings/cp1252.py", "locale.py"]  # cp1252: Unicode
INSTALL = (
    "pip install --no-deps --target SIDE flash-linear-attention==0.6.0 fla-core==0.6.0 "
    "triton==3.9.0 transformers==5.23.0 einops==0.8.2 tokenizers==0.23.3, then YOCO_FLA_SITE=SIDE"
)


@pytest.fixture(scope="module")
def fla():
    """fla and transformers importable (from $YOCO_FLA_SITE); CI fails without them."""
    site = os.environ.get("YOCO_FLA_SITE")
    if site and site not in sys.path:
        sys.path.append(site)  # appended: the side folder never shadows the project's packages
    try:
        import fla
        import transformers  # noqa: F401
    except ImportError as error:
        message = f"flash-linear-attention is not importable ({error}): {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return fla


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """yoco-tiny with the demo tokenizer's 2048 pieces, 3 steps on the standard library."""
    out = tmp_path_factory.mktemp("run")
    train_main(
        [
            "model=yoco-tiny",
            "model.vocab_size=2048",
            "seq_len=32",
            "batch_size=8",
            "steps=3",
            "warmup_steps=1",
            "eval_batches=1",
            "eval_every=3",
            "log_every=1",
            "checkpoint_every=3",
            "progress=false",
            f"output_dir={out}",
        ]
    )
    return out


@pytest.fixture(scope="module")
def export(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "fla"
    assert export_main([str(run), str(out), "--format", "fla"]) is None
    return out


@pytest.fixture(scope="module")
def fla_model(fla, export):
    from bench.fla_bridge import load_fla

    return load_fla(export)


def test_fla_loads_the_export_strictly(fla_model, export):
    from transformers import AutoConfig

    model, info, _ = fla_model
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    assert type(model).__name__ == "YOCOForCausalLM"
    config = AutoConfig.from_pretrained(export)
    assert type(config).__name__ == "YOCOConfig" and config.norm_eps == 1e-5
    assert config.self_decoder_attn["type"] == "gated_retention"
    assert config.self_decoder_attn["rope_inv_freq"] == "yoco"
    assert config.cross_decoder_attn["rope_inv_freq"] == "yoco"
    assert (config.num_hidden_layers, config.num_self_decoder_layers) == (4, 2)
    assert not config.tie_word_embeddings


def test_fla_logits_equal_ours(fla_model, run):
    from bench.fla_bridge import fla_logits, relative_error

    model, _, ops = fla_model
    ours = yoco_jax.load_pretrained(run)
    tokens = ours.tokenizer.encode((STDLIB / "difflib.py").read_text())
    window = np.asarray([tokens[:100], tokens[1000:1100]])
    assert relative_error(fla_logits(model, ops, window), ours.logits(window)) < 1e-4


def test_transformers_greedy_generate_equals_ours(fla_model, run):
    from bench.fla_bridge import fla_greedy

    model, _, ops = fla_model
    ours = yoco_jax.load_pretrained(run)
    prompt = ours.tokenizer.encode((STDLIB / "difflib.py").read_text())[:48]
    mine = ours.generate([prompt], max_new_tokens=16)[0].tokens
    assert fla_greedy(model, ops, prompt, 16, ours.tokenizer.eos_id) == mine


@pytest.mark.parametrize("name", TEXTS)
def test_hf_tokenizer_encodes_real_text_as_ours(fla, export, name):
    from transformers import AutoTokenizer

    ours = Tokenizer.load(export / "tokenizer.model")
    theirs = AutoTokenizer.from_pretrained(export)
    text = (STDLIB / name).read_text(encoding="utf-8")
    tokens = ours.encode(text)
    assert len(tokens) > 1000 and theirs.encode(text) == tokens
    assert theirs.decode(tokens) == text
    odd = "x = 'héllo 世界'\t\n\n    </s> <s> <pad> <unk> \U0001f600"  # specials as plain text
    assert theirs.encode(odd) == ours.encode(odd)
    assert (theirs.eos_token_id, theirs.bos_token_id, theirs.pad_token_id) == (1, 2, 0)


def test_import_back_is_bit_equal(run, export):
    trained = yoco_jax.load_pretrained(run)
    back = yoco_jax.load_pretrained(export, chunk_size=trained.config.chunk_size)
    assert back.config == trained.config
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(trained.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.tokenizer.sha256 == trained.tokenizer.sha256
    generation = json.loads((export / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["bos_token_id"]) == (1, 2)


# --- refusals (no fla needed) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", n_layers=2), seed=0)


def test_sliding_window_export_is_refused_in_one_line(tmp_path, capsys):
    model = yoco_jax.init(yoco_jax.get_config("yoco-swa-tiny"), seed=0)
    model.save_official(tmp_path / "swa")
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(tmp_path / "swa"), str(tmp_path / "out"), "--format", "fla"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "sliding_window" in err and "--format official" in err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_does_not_convert_exactly_is_refused(tiny, tmp_path):
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    text = "\n".join(" ".join(line) for line in itertools.permutations(words, 4))
    unigram = Tokenizer.train([text], 300, tmp_path / "uni", model_type="unigram")
    model = yoco_jax.Model(
        yoco_jax.get_config("yoco-tiny", n_layers=2, vocab_size=300), tiny.params, unigram
    )
    with pytest.raises(ValueError, match="not a BPE model.*yoco-tokenizer train"):
        model.save_fla(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change,words",
    [
        ({"self_decoder_attn": {"type": "gated_deltanet"}}, "type='gated_deltanet'"),
        ({"cross_decoder_attn": {"rope_inv_freq": "fla"}}, "decoder_attn.rope_inv_freq='fla'"),
        ({"attnres_block_size": 2}, "attnres_block_size=2"),
        ({"num_self_decoder_layers": 2}, "num_self_decoder_layers=2 of num_hidden_layers=2"),
    ],
)
def test_fla_settings_we_do_not_compute_are_refused(tiny, tmp_path, change, words):
    tiny.save_fla(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(yoco_jax.CheckpointError, match="does not compute") as error:
        yoco_jax.load_pretrained(tmp_path)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_tied_fla_checkpoints_load_with_the_embedding_as_output(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    tiny.save_fla(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["lm_head.weight"]  # transformers saves a tied weight once
    save_file(state, str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    params = yoco_jax.load_pretrained(tmp_path).params
    np.testing.assert_array_equal(
        params["output_projection"]["kernel"], params["embed_tokens"]["embedding"].T
    )


def test_an_fla_export_replaces_an_official_one(tiny, tmp_path):
    tiny.save_official(tmp_path)
    tiny.save_fla(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
