"""Bad input and faults around inference and export (issues 9, 24): a one-line error, exit 2 for
bad input and 1 for machine failure, nothing guessed or overwritten; few compilations."""

import dataclasses
import json
import os
import shutil
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.cli.export import main as export_main
from yoco_jax.cli.infer import main as infer_main
from yoco_jax.data import demo_tokenizer
from yoco_jax.inference import decode, generate, prefill, start_decode
from yoco_jax.train.checkpoint import Checkpointer
from yoco_jax.train.step import TrainState


@pytest.fixture(scope="module")
def model():
    """yoco-tiny sized for the demo tokenizer, carrying it."""
    model = yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=2048), seed=5)
    return dataclasses.replace(model, tokenizer=demo_tokenizer())


@pytest.fixture(scope="module")
def export(model, tmp_path_factory):
    """An exported folder: params.json, model.safetensors, tokenizer.model."""
    return model.save_official(tmp_path_factory.mktemp("exp") / "export")


@pytest.fixture(scope="module")
def bare(model, tmp_path_factory):
    """The same weights exported without a tokenizer (as an official release may be)."""
    return dataclasses.replace(model, tokenizer=None).save_official(
        tmp_path_factory.mktemp("bare") / "bare"
    )


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    """A training run folder: one checkpoint (step 5) of other weights, and its tokenizer."""
    folder = tmp_path_factory.mktemp("run")
    other = dataclasses.replace(model, params=jax.tree.map(np.negative, model.params))
    saver = Checkpointer(str(folder), async_save=False)
    config = {"model": dataclasses.asdict(model.config)}
    state = TrainState(jnp.int32(5), other.params, {}, jnp.zeros(2, jnp.uint32))
    saver.save(5, state, {}, config)
    saver.wait()
    saver.close()
    shutil.copyfile(demo_tokenizer().path, folder / "tokenizer.model")  # as training does
    return folder, other


def cli(main, argv, capsys):
    """(exit code, stdout, stderr) of an in-process CLI run."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, expected_code, *words):
    """The exit code, and one error line (after argparse's usage lines, if any) with `words`."""
    assert code == expected_code, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert errors == lines[-1:] and "Traceback" not in err, err
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), err
    for word in words:
        assert word in lines[-1], lines[-1]


def same_params(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- defect 2: the tokenizer travels with the export and is never guessed -------------------


def test_export_carries_the_run_tokenizer(run, tmp_path, capsys):
    folder, other = run
    code, out, _ = cli(export_main, [folder, tmp_path / "out"], capsys)
    assert code == 0 and "tokenizer.model" in out
    shipped = (tmp_path / "out" / "tokenizer.model").read_bytes()
    assert shipped == (folder / "tokenizer.model").read_bytes()
    loaded = yoco_jax.load_pretrained(tmp_path / "out")
    assert loaded.tokenizer.sha256 == demo_tokenizer().sha256
    assert same_params(loaded.params, other.params)


def test_no_tokenizer_is_never_guessed(bare, tmp_path, capsys):
    assert yoco_jax.load_pretrained(bare).tokenizer is None  # vocab 2048 = the demo's, still None
    code, _, err = cli(infer_main, ["--checkpoint", bare, "--prompt", "import os"], capsys)
    one_line_error(code, err, 2, "no tokenizer", "--tokenizer")
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": [5, 6, 7]}) + "\n")
    argv = ["--checkpoint", bare, "--input-jsonl", tmp_path / "in.jsonl", "--max-new-tokens", 3]
    code, out, _ = cli(infer_main, argv, capsys)
    result = json.loads(out)
    assert code == 0 and result["completion"] is None and len(result["completion_tokens"]) == 3
    code, out, _ = cli(
        infer_main,
        [
            "--checkpoint",
            bare,
            "--prompt",
            "import os",
            "--max-new-tokens",
            3,
            "--tokenizer",
            demo_tokenizer().path,
        ],
        capsys,
    )
    assert code == 0 and out.endswith("\n")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_before_generating(tmp_path, capsys):
    config = yoco_jax.get_config("yoco-tiny", vocab_size=1024)
    shapes = jax.eval_shape(lambda: yoco_jax.init(config).params)  # zeros: no compilation
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
    small = yoco_jax.Model(config, zeros).save_official(tmp_path / "small")
    argv = ["--checkpoint", small, "--prompt", "x", "--tokenizer", demo_tokenizer().path]
    one_line_error(*cli(infer_main, argv, capsys)[::2], 2, "2048 pieces", "has only 1024")
    with pytest.raises(
        ValueError, match="has 2048 pieces but the model's vocabulary has only 1024"
    ):
        generate(yoco_jax.load_pretrained(small), "x", tokenizer=demo_tokenizer())  # no compile


# --- defect 8: non-positive sizes -------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--prefill-chunk", "--batch-size", "--max-new-tokens"])
@pytest.mark.parametrize("value", ["-1", "0"])
def test_non_positive_sizes_are_usage_errors(export, capsys, flag, value):
    argv = ["--checkpoint", export, "--prompt", "x", flag, value]
    one_line_error(*cli(infer_main, argv, capsys)[::2], 2, flag, "must be a positive integer")


def test_non_positive_sizes_in_the_library(model):
    stream = lambda tokens: None
    with pytest.raises(ValueError, match="block=0 must be a positive integer"):
        generate(model, [[5, 6]], 4, on_tokens=stream, block=0)  # used to loop forever
    with pytest.raises(ValueError, match="prefill_chunk=-1 must be a positive integer"):
        generate(model, [[5, 6]], 4, prefill_chunk=-1)  # used to ignore the prompt
    with pytest.raises(ValueError, match="prefill_chunk=0 must be a positive integer"):
        prefill(model, [[5, 6]], prefill_chunk=0)
    logits, cache = prefill(model, [[5, 6]], max_len=16, prefill_chunk=16)
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        decode(model, start_decode(logits, cache, 4), steps=0)


# --- defect 9: export never overwrites or shadows silently ---------------------------------


def test_export_into_a_non_empty_folder_needs_force(export, bare, tmp_path, capsys):
    target = tmp_path / "t"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, _, err = cli(export_main, [export, target], capsys)
    one_line_error(code, err, 2, "not empty", "--force")
    assert sorted(os.listdir(target)) == ["notes.txt"]
    assert cli(export_main, [export, target, "--force"], capsys)[0] == 0
    assert (target / "tokenizer.model").exists() and (target / "notes.txt").read_text() == "mine"
    assert cli(export_main, [bare, target, "--force"], capsys)[0] == 0
    assert not (target / "tokenizer.model").exists()  # a stale tokenizer would pair silently


def test_export_into_a_run_folder_is_refused(run, export, capsys):
    folder, _ = run
    before = sorted(os.listdir(folder))
    code, _, err = cli(export_main, [export, folder, "--force"], capsys)
    one_line_error(code, err, 2, "training run folder")
    assert sorted(os.listdir(folder)) == before


def test_load_pretrained_prefers_a_runs_checkpoints(run, export, tmp_path):
    folder, other = run
    stale = tmp_path / "stale_run"
    stale.mkdir()
    for name in os.listdir(folder):
        os.symlink(folder / name, stale / name)
    for name in ("params.json", "model.safetensors"):  # an old export left in the run folder
        os.symlink(export / name, stale / name)
    assert same_params(yoco_jax.load_pretrained(stale).params, other.params)


# --- defects 12 and 13: one-line errors, nothing created ------------------------------------


def test_export_errors_are_one_line(run, export, tmp_path, capsys):
    code, _, err = cli(export_main, [tmp_path / "missing", tmp_path / "o"], capsys)
    one_line_error(code, err, 2, "does not exist")
    (tmp_path / "file").write_text("x")
    one_line_error(*cli(export_main, [export, tmp_path / "file"], capsys)[::2], 2, "is a file")
    damaged = tmp_path / "damaged"
    shutil.copytree(run[0], damaged)
    for item in (damaged / "checkpoints" / "5").iterdir():  # rm -rf checkpoints/5/*
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    code, _, err = cli(export_main, [damaged, tmp_path / "o2"], capsys)
    one_line_error(code, err, 2, str(damaged))
    assert not (tmp_path / "o2").exists()


def test_infer_path_errors(export, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    cases = [
        (["--checkpoint", tmp_path / "file", "--prompt", "x"], "is a file"),
        (["--checkpoint", export, "--prompt-file", tmp_path / "dir"], "is a folder"),
        (["--checkpoint", export, "--prompt", "x", "--output-jsonl", tmp_path / "dir"], "folder"),
        (["--checkpoint", export, "--input-jsonl", tmp_path / "dir"], "is a folder"),
        (["--checkpoint", export, "--prompt", "x", "--seed", str(2**63)], "64-bit"),
        (["--checkpoint", export, "--prompt", "x", "--max-new-tokens", 10**12], "GiB"),
        (["--checkpoint", export, "--prompt", "x", "--stop", "2048"], "outside the vocabulary"),
    ]
    for argv, words in cases:
        one_line_error(*cli(infer_main, argv, capsys)[::2], 2, words)


@pytest.mark.parametrize(
    "line,words",
    [
        ({"prompt": 123}, '"prompt" must be non-empty text'),
        ({"tokens": [[5, 6], [7]]}, "flat list of integer ids"),
        ({"tokens": [5.0, 6]}, "flat list of integer ids"),
        ({"tokens": [True, 6]}, "flat list of integer ids"),
        ({"tokens": ["5", 6]}, "flat list of integer ids"),
        ({"tokens": []}, "non-empty"),
        ({"prompt": "x", "completion": "y"}, "'completion' is where results go"),
    ],
)
def test_bad_jsonl_lines(export, tmp_path, capsys, line, words):
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps(line))
    argv = ["--checkpoint", export, "--input-jsonl", tmp_path / "in.jsonl"]
    one_line_error(*cli(infer_main, argv, capsys)[::2], 2, "in.jsonl:2", words)


@pytest.mark.parametrize("tokens", [[5.0, 6.0], [True, 6], ["5", "6"], [[5, 6]]])
def test_library_refuses_non_integer_tokens(model, tokens):
    with pytest.raises(ValueError, match="flat list of integer token ids"):
        generate(model, [tokens])


def test_library_refuses_bad_seed_and_stop_ids(model):
    with pytest.raises(ValueError, match="64-bit seed"):
        generate(model, [[5, 6]], 2, seed=2**63)
    with pytest.raises(ValueError, match=r"stop ids \[2048\] lie outside the vocabulary"):
        generate(model, [[5, 6]], 2, stop=[2048])


def test_users_keys_and_prompt_tokens_are_kept(export, tmp_path, capsys):
    lines = [{"prompt": "import os", "text": "mine"}, {"tokens": [5, 6, 7], "id": 1}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    argv = ["--checkpoint", export, "--input-jsonl", tmp_path / "in.jsonl", "--max-new-tokens", 3]
    code, out, _ = cli(infer_main, [*argv, "--batch-size", 1], capsys)  # shapes compiled before
    first, second = map(json.loads, out.splitlines())
    assert code == 0 and first["text"] == "mine" and first["prompt"] == "import os"
    assert isinstance(first["completion"], str) and len(first["completion_tokens"]) <= 3
    assert second["tokens"] == [5, 6, 7] and second["id"] == 1


def test_loading_creates_nothing(export, tmp_path):
    before = sorted(os.listdir(export))
    yoco_jax.load_pretrained(export)
    assert sorted(os.listdir(export)) == before
    (tmp_path / "plain").mkdir()
    with pytest.raises(yoco_jax.CheckpointError, match="neither an exported model"):
        yoco_jax.load_pretrained(tmp_path / "plain")
    assert os.listdir(tmp_path / "plain") == []  # used to gain an empty checkpoints/


def test_safetensors_has_the_permissions_of_params_json(model, tmp_path):
    old = os.umask(0o022)
    try:
        folder = model.save_official(tmp_path / "perm")
    finally:
        os.umask(old)
    modes = {f: stat.S_IMODE((folder / f).stat().st_mode) for f in os.listdir(folder)}
    assert modes == dict.fromkeys(["params.json", "model.safetensors", "tokenizer.model"], 0o644)


# --- docs items ---------------------------------------------------------------------------------


def test_shape_overrides_are_refused_up_front(export, run):
    for folder in (export, run[0]):
        with pytest.raises(yoco_jax.ConfigError, match="cannot override dim"):
            yoco_jax.load_pretrained(folder, dim=64)
    loaded = yoco_jax.load_pretrained(export, dtype="bfloat16", chunk_size=8, remat="full")
    assert (loaded.config.dtype, loaded.config.chunk_size) == ("bfloat16", 8)
    with pytest.raises(yoco_jax.ConfigError, match="cannot override n_layers"):
        loaded.replace(n_layers=4)


def test_library_refuses_empty_batches_and_prompts_that_are_not_lists(model):
    for tokens in (np.zeros((0, 4), np.int32), np.zeros((2, 0), np.int32), [[]]):
        with pytest.raises(ValueError, match=r"tokens of shape \(\d, \d\) are empty: give at"):
            model.logits(tokens)  # was ZeroDivisionError
    for prompts in (None, 5, {"a": 1}):  # None was TypeError: no len()
        with pytest.raises(ValueError, match="prompts must be a string, a list of token ids"):
            model.generate(prompts, 2)
