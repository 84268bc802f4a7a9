"""Loading under hostile input (issue 26): a tokenizer kept in the run folder is never deleted, a
run with a vocabulary larger than its tokenizer loads everywhere, checkpoints store no path of
the training machine, a step without checksums is refused unless asked for, exports never land
in a run's checkpoints, and the commands exit 2 with a message naming the problem."""

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.cli.export import main as export_main
from yoco_jax.cli.infer import main as infer_main
from yoco_jax.cli.train import main as train_main
from yoco_jax.data import Tokenizer, demo_tokenizer
from yoco_jax.errors import CheckpointError, ConfigError
from yoco_jax.train.checkpoint import Checkpointer
from yoco_jax.train.damage import CheckpointWarning
from yoco_jax.train.lock import RunLock
from yoco_jax.train.run_folder import clear_run
from yoco_jax.train.step import TrainState

RUN = [
    "model=yoco-tiny",
    "model.n_layers=2",
    "model.vocab_size=2048",
    "seq_len=32",
    "batch_size=8",
    "warmup_steps=1",
    "progress=false",
    "steps=2",
    "checkpoint_every=2",
    "data.eval_fraction=0",
]


def cli(main, argv, capsys):
    """(exit code, stdout, stderr) of an in-process CLI run."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(code, err, expected_code, *words):
    """The exit code, and a last line `...: error: ...` holding `words`, without a traceback."""
    assert code == expected_code, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and "Traceback" not in err, err
    for word in words:
        assert word in last, last


@pytest.fixture(scope="module")
def own_tokenizer_run(tmp_path_factory):
    """A 2-step run whose 300-piece tokenizer the user keeps in the run folder itself, with a
    model vocabulary of 2048; returns (run folder, the tokenizer's bytes before training)."""
    root = tmp_path_factory.mktemp("own")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = ["def", "class", "return", "import", "for", "in", "if", "else", "x", "y", "(", ")"]
    for i in range(8):
        (corpus / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 80)) + f" end {i}\n")
    out = root / "out"
    out.mkdir()
    trained = Tokenizer.train([str(corpus)], 300, str(root / "tok"))
    shutil.copyfile(trained.path, out / "tokenizer.model")
    before = (out / "tokenizer.model").read_bytes()
    argv = [
        *RUN,
        f"tokenizer={out / 'tokenizer.model'}",
        f"output_dir={out}",
        f"data.path={corpus}",
    ]
    train_main(argv)
    return out, before, argv


def test_a_tokenizer_kept_in_the_run_folder_survives_training_and_restart(
    own_tokenizer_run, capsys
):
    out, before, argv = own_tokenizer_run
    assert (out / "tokenizer.model").read_bytes() == before
    shutil.copytree(out, out.parent / "again")
    again = out.parent / "again"
    argv = [a.replace(str(out), str(again)) for a in argv]
    with pytest.raises(SystemExit) as done:  # clears the run, then fails on the data
        train_main(["--restart", *argv, f"data.path={again / 'missing'}"])
    assert done.value.code == 2
    assert not (again / "checkpoints").exists()  # --restart did clear the run
    assert (again / "tokenizer.model").read_bytes() == before
    assert "missing" in capsys.readouterr().err


def test_checkpoints_store_no_path_of_the_training_machine(own_tokenizer_run):
    out, _, _ = own_tokenizer_run
    saved = Checkpointer(str(out)).read_config(2)
    assert saved["train"]["output_dir"] == "."
    assert saved["train"]["data"]["path"] == "../corpus"
    assert saved["train"]["tokenizer"] == "tokenizer.model"
    assert saved["tokenizer"]["path"] == "tokenizer.model"
    assert str(out.parent) not in json.dumps(saved)


def test_a_vocabulary_larger_than_the_tokenizer_loads_and_samples(own_tokenizer_run, capsys):
    out, before, _ = own_tokenizer_run
    model = yoco_jax.load_pretrained(out)
    assert model.config.vocab_size == 2048 and model.tokenizer.vocab_size == 300
    code, text, err = cli(
        infer_main,
        [
            "--checkpoint",
            out,
            "--prompt",
            "def x",
            "--max-new-tokens",
            8,
            "--temperature",
            5.0,
            "--seed",
            3,
        ],
        capsys,
    )
    assert code == 0, err
    assert text.endswith("\n")
    exported = out.parent / "exported"
    assert cli(export_main, [out, exported], capsys)[0] == 0
    assert yoco_jax.load_pretrained(exported).tokenizer.vocab_size == 300
    assert (out / "tokenizer.model").read_bytes() == before


# --- a step without checksums ------------------------------------------------------------------


@pytest.fixture(scope="module")
def unverified(tmp_path_factory):
    """A run folder whose only step lost its checksums and then had bits flipped."""
    model = yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=2048), seed=1)
    folder = tmp_path_factory.mktemp("unverified")
    saver = Checkpointer(str(folder), async_save=False)
    state = TrainState(jnp.int32(3), model.params, {}, jnp.zeros(2, jnp.uint32))
    saver.save(3, state, {}, {"model": dataclasses.asdict(model.config)})
    saver.wait()
    saver.close()
    shutil.copyfile(demo_tokenizer().path, folder / "tokenizer.model")
    step = folder / "checkpoints" / "3"
    shutil.rmtree(step / "checksums")
    for path in (step / "state").rglob("ocdbt.process_0/d/*"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    return folder


def test_a_step_without_checksums_is_refused_by_every_loader(unverified, tmp_path, capsys):
    with pytest.raises(
        CheckpointError, match="step 3: unverified: it has no checksums.*--allow-unverified"
    ):
        yoco_jax.load_pretrained(unverified)
    code, _, err = cli(infer_main, ["--checkpoint", unverified, "--prompt", "x"], capsys)
    error_line(code, err, 2, "no checksums", "--allow-unverified")
    code, _, err = cli(export_main, [unverified, tmp_path / "out"], capsys)
    error_line(code, err, 2, "no checksums", "--allow-unverified")
    assert not (tmp_path / "out").exists()
    from yoco_jax.serve.__main__ import main as serve_main

    code, _, err = cli(serve_main, ["--checkpoint", unverified, "--port", 8123], capsys)
    error_line(code, err, 2, "no checksums", "--allow-unverified")


def test_allow_unverified_loads_with_a_warning(unverified):
    with pytest.warns(CheckpointWarning, match="step 3 .* has no checksums: loading it unverified"):
        model = yoco_jax.load_pretrained(unverified, allow_unverified=True)
    assert model.config.vocab_size == 2048


# --- small regressions ------------------------------------------------------------------------


def test_a_misspelt_override_suggests_the_setting(unverified):
    with pytest.raises(ConfigError, match="unknown setting 'dtyp'; did you mean 'dtype'"):
        yoco_jax.load_pretrained(unverified, dtyp="bfloat16")


def test_an_empty_device_as_input_jsonl_says_it_holds_no_prompts(unverified, capsys):
    argv = ["--checkpoint", unverified, "--input-jsonl", "/dev/null"]
    error_line(*cli(infer_main, argv, capsys)[::2], 2, "/dev/null holds no prompts")


def test_a_busy_run_folder_is_a_usage_error(tmp_path, capsys):
    with RunLock(str(tmp_path / "busy")):
        code, _, err = cli(train_main, [*RUN, f"output_dir={tmp_path / 'busy'}"], capsys)
    error_line(code, err, 2, "is in use by another training run")


def test_export_into_a_runs_checkpoint_tree_is_refused_even_with_force(unverified, capsys):
    target = unverified / "checkpoints" / "export"
    code, _, err = cli(export_main, [unverified, target, "--force"], capsys)
    error_line(code, err, 2, "inside the checkpoints of the training run")
    assert not target.exists()
    assert sorted(p.name for p in (unverified / "checkpoints").iterdir()) == ["3"]


def test_clearing_a_run_keeps_the_inputs_it_holds(tmp_path):
    """A corpus kept as the run folder's `tb` (a name the run's logs use) is never removed."""
    data = tmp_path / "out" / "tb"
    data.mkdir(parents=True)
    (data / "doc.txt").write_text("one document\n")
    (tmp_path / "out" / "metrics.jsonl").write_text("{}\n")
    clear_run(str(tmp_path / "out"), restart=True, keep=[str(data)])
    assert (data / "doc.txt").read_text() == "one document\n"
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# --- the official-layout loader ----------------------------------------------------------------


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    model = yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=2048), seed=1)
    return model.save_official(tmp_path_factory.mktemp("official") / "model")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("list", "holds a JSON list, not an object"),
        ("folder", "is not valid JSON \\(unreadable\\): .*Is a directory"),
        ("nan", "holds NaN or infinite values"),
        ("int", "holds int32 numbers: weights are floats"),
    ],
)
def test_a_damaged_official_folder_is_a_checkpoint_error(official, tmp_path, damage, words):
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(official, tmp_path / "copy")
    if damage == "list":
        (folder / "params.json").write_text("[1, 2]")
    elif damage == "folder":
        (folder / "params.json").unlink()
        (folder / "params.json").mkdir()
    else:
        state = load_file(str(folder / "model.safetensors"))
        name = sorted(state)[0]
        state[name] = (
            np.full_like(state[name], np.nan) if damage == "nan" else state[name].astype(np.int32)
        )
        save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=words):
        yoco_jax.load_pretrained(folder)
