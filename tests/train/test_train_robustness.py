"""Training under bad input and faults (issue 9): a lock on the run folder, the tokenizer and data
compared on resume, damaged checkpoints (checksums, fallback), a checkpoint saved before a data
error ends the run, one log row per step after a resume, range-checked settings, memory checked
up front, and the documented defaults. Two runs compile (the shared finished run and the data
error); every other test stops before anything compiles."""

import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from yoco_jax.config import ConfigError, get_config
from yoco_jax.data import Tokenizer, demo_tokenizer
from yoco_jax.errors import CheckpointError
from yoco_jax.model import build_model
from yoco_jax.sharding import make_mesh
from yoco_jax.train.checkpoint import Checkpointer
from yoco_jax.train.config import TrainConfig, load_train_config
from yoco_jax.train.damage import CheckpointWarning
from yoco_jax.train.load import load_params
from yoco_jax.train.lock import RunInUseError, RunLock
from yoco_jax.train.loop import train
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer

pytestmark = pytest.mark.slow  # training runs: not in `-m "not slow"`

ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "model=yoco-tiny",
    "model.n_layers=2",
    "model.vocab_size=2048",
    "seq_len=32",
    "batch_size=8",
    "learning_rate=1e-2",
    "warmup_steps=2",
    "log_every=1",
    "eval_batches=1",
    "progress=false",
    "steps=4",
    "checkpoint_every=2",
]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def _config(output_dir, data, *overrides):
    return load_train_config(
        None, [*RUN, f"data.path={data}", f"output_dir={output_dir}", *overrides]
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20 small text documents."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["def", "class", "return", "import", "for", "in", "if", "else", "x", "y", "(", ")"]
    for i in range(20):
        (root / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, 60)) + f" end {i}\n")
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    """A finished 4-step run (checkpoints 2 and 4), with the default data.eval_fraction=0.01."""
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    config = _config(output_dir, corpus)
    assert config.data.eval_fraction == 0.01
    train(config)
    return output_dir


@pytest.fixture(scope="module")
def other_tokenizer(corpus, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tokenizer") / "other"
    return Tokenizer.train([str(corpus)], 300, str(prefix))


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "run"))


def _rows(output_dir):
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # not a line being written


def _tensorboard_steps(tb, tag="loss"):
    """The steps of `tag` TensorBoard shows: events in file order, a SessionLog START at step s
    purging the earlier events at steps >= s (what tensorboard's EventAccumulator does)."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    steps = []
    for path in sorted(Path(tb).iterdir()):
        data, i = path.read_bytes(), 0
        while i < len(data):  # TFRecord: length (8), its crc (4), data, data crc (4)
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                steps = [s for s in steps if s < event.step]
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _trainer(output_dir, corpus):
    config = _config(output_dir, corpus)
    model = build_model(get_config("yoco-tiny", n_layers=2, vocab_size=2048))
    mesh = make_mesh(config.mesh)
    return Trainer(model, make_optimizer(config), learning_rate_schedule(config), mesh)


# Defect 7: the default held-out fraction on a small corpus --------------------------------------


def test_a_small_corpus_trains_with_the_default_eval_fraction(finished):
    rows = _rows(finished)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert any("eval_loss" in r for r in rows)  # one of the 20 documents is held out
    assert Checkpointer(str(finished)).all_steps() == [2, 4]


# Defect 1: one run per output folder ------------------------------------------------------------


def test_a_busy_folder_is_refused_at_once_and_a_killed_run_leaves_no_lock(tmp_path, corpus):
    output_dir = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from yoco_jax.train.lock import RunLock; "
            "RunLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(300)",
            str(output_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        started = time.perf_counter()
        expected = rf"in use by another training run \(pid {holder.pid} on host "
        with pytest.raises(RunInUseError, match=expected + re.escape(socket.gethostname())):
            train(_config(output_dir, corpus))
        assert time.perf_counter() - started < 10  # refused before reading data or compiling
        assert not (output_dir / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(str(output_dir)):  # SIGKILL released it
        assert json.loads((output_dir / "run.lock").read_text())["pid"] == os.getpid()


# Defect 3 and 13: what a resume compares -------------------------------------------------------


def test_resuming_with_another_tokenizer_is_refused_naming_both(
    finished, tmp_path, corpus, other_tokenizer
):
    run = _copy(finished, tmp_path)
    demo = demo_tokenizer().sha256[:12]
    expected = (
        rf"trained with the tokenizer .*tokenizer.model \(sha256 {demo}\), not "
        rf".*other.model \(sha256 {other_tokenizer.sha256[:12]}\)"
    )
    with pytest.raises(ValueError, match=expected):
        train(_config(run, corpus, f"tokenizer={other_tokenizer.path}", "steps=6"))


def test_steps_below_the_checkpoint_is_an_error_and_steps_reached_is_nothing_to_do(
    finished, tmp_path, corpus, capsys
):
    run = _copy(finished, tmp_path)
    with pytest.raises(ConfigError, match="steps=3 is below step 4 of the checkpoint"):
        train(_config(run, corpus, "steps=3"))
    assert train(_config(run, corpus, "steps=4")) == {}
    assert "nothing to do: the run in" in capsys.readouterr().out


def test_resuming_with_another_data_path_warns(finished, tmp_path, corpus):
    run = _copy(finished, tmp_path)
    moved = shutil.copytree(corpus, tmp_path / "moved")
    with pytest.warns(UserWarning, match=rf"data.path='{moved}', but it was trained on "):
        train(_config(run, moved, "steps=4"))


# Defects 4 and 5: damaged checkpoints -----------------------------------------------------------


def test_flipped_checkpoint_bits_never_load_silently(finished, tmp_path, corpus):
    run = _copy(finished, tmp_path)
    for path in (run / "checkpoints" / "4" / "state").rglob("ocdbt.process_0/d/*"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10  # one bit in each data file
        path.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match="step 4 .* is damaged .*; loading step 2 instead"):
        _, params = load_params(str(run))
    _, want = load_params(str(finished), 2)
    for got, expected in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(CheckpointError, match="checkpoint step 4 in .* is damaged"):
        load_params(str(run), 4)
    # Resuming checks the same checksums (optimizer state included).
    checkpointer = Checkpointer(str(run))
    with pytest.warns(CheckpointWarning, match="step 4 .* damaged .* resuming from step 2"):
        step, state, _, _ = checkpointer.restore_latest(_trainer(run, corpus).abstract_state)
    checkpointer.close()
    assert step == 2 and int(state.step) == 2
    assert (run / "damaged-checkpoints" / "4").is_dir()


def test_loading_a_folder_without_checkpoints_creates_nothing(corpus):
    before = sorted(os.listdir(corpus))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_params(str(corpus))
    assert sorted(os.listdir(corpus)) == before  # no empty checkpoints/ left behind


def test_a_deleted_latest_checkpoint_falls_back_and_each_step_is_logged_once(
    finished, tmp_path, corpus
):
    run = _copy(finished, tmp_path)
    for item in (run / "checkpoints" / "4").iterdir():  # rm -rf checkpoints/4/*
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    with pytest.warns(CheckpointWarning, match="step 4 .* is damaged .* resuming from step 2"):
        train(_config(run, corpus, "steps=2"))
    assert Checkpointer(str(run)).all_steps() == [2]
    assert [r["step"] for r in _rows(run)] == [1, 2]  # the rows of steps 3 and 4 are gone
    assert _tensorboard_steps(run / "tb") == [1, 2]
    for item in (run / "checkpoints" / "2").iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    with pytest.raises(CheckpointError, match="every checkpoint in .* is damaged.*--restart"):
        train(_config(run, corpus, "steps=2"))


# Defects 6, 7 and 3: a data error after step 1 on a single-file corpus; a folder left by a run
# that never checkpointed ----------------------------------------------------------------------


def test_a_data_error_mid_run_saves_a_checkpoint_first(tmp_path, other_tokenizer, capsys):
    data = tmp_path / "only.txt"  # a single text file, with the default data.eval_fraction
    data.write_text("one tiny document, read over and over\n")
    output_dir = tmp_path / "run"
    output_dir.mkdir()  # what a run killed before its first checkpoint leaves
    shutil.copyfile(other_tokenizer.path, output_dir / "tokenizer.model")
    (output_dir / "metrics.jsonl").write_text(json.dumps({"step": 99, "loss": 1.0}) + "\n")

    def corrupt_once_past_step_2():
        metrics = output_dir / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics.exists() and any(r["step"] in (2, 3) for r in _rows(output_dir)):
                data.write_bytes("caf\xe9".encode("latin-1"))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=corrupt_once_past_step_2, daemon=True)
    thread.start()
    with pytest.raises(ValueError, match="only.txt changed since training started"):
        train(_config(output_dir, data, "steps=500", "checkpoint_every=0"))
    thread.join(timeout=1)
    output = capsys.readouterr().out
    assert "data.eval_fraction=0.01 holds out no document" in output  # trains, without eval
    steps = Checkpointer(str(output_dir)).all_steps()
    assert len(steps) == 1 and steps[0] >= 2  # checkpoint_every=0: only the save on error
    assert f"error after step {steps[0]}: saved it in" in output
    _, params = load_params(str(output_dir))
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
    saved = hashlib.sha256((output_dir / "tokenizer.model").read_bytes()).hexdigest()
    assert saved == demo_tokenizer().sha256  # not the dead run's tokenizer
    assert 99 not in [r["step"] for r in _rows(output_dir)]


# Defects 11 and 12: settings checked before anything runs ---------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "learning_rate=.nan",
        "learning_rate=.inf",
        "learning_rate=0",
        "clip_norm=-1",
        "beta1=2",
        "beta2=1",
        "eps=-1",
        "eps=0",
        "weight_decay=-5",
        "min_lr_ratio=1.5",
    ],
)
def test_optimizer_settings_are_range_checked(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}=.* must be a finite number"):
        load_train_config(None, [override])
    assert load_train_config(None, ["clip_norm=0"]).clip_norm == 0  # documented: no clipping


def test_yaml_configs_take_dotted_keys_exponents_and_refuse_bad_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model.dim: 32\ndata.eval_fraction: 0.5\nmesh.fsdp: 2\nlearning_rate: 1e-3\n")
    config = load_train_config(str(path), ["model.n_layers=2"])
    assert config.model_overrides == {"dim": 32, "n_layers": 2}
    assert config.data.eval_fraction == 0.5 and config.mesh["fsdp"] == 2
    assert config.learning_rate == 1e-3
    for text, message in (
        ("steps: [1, 2\n", "run.yaml: not valid YAML"),
        ("data: 5\n", "data must be a mapping"),
        ("mesh: {data: x}\n", "mesh.data='x' must be an integer"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_train_config(str(path))


def test_a_sequence_far_beyond_memory_is_refused_up_front(tmp_path, corpus):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"seq_len=262144 x batch_size=8 needs at least .* GiB"):
        train(_config(tmp_path, corpus, "seq_len=262144"))
    assert time.perf_counter() - started < 30  # nothing compiled


def test_a_mesh_that_does_not_fit_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "mesh.data=3", "mesh.fsdp=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert result.returncode == 2, result.stderr
    assert "train.py: error: " in result.stderr and "mesh" in result.stderr


# Docs: the defaults table of docs/training.md is what train.py uses -----------------------------


def test_the_documented_defaults_are_what_train_py_and_a_config_file_use():
    text = (ROOT / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| `([^|]+)` \| ([^|]*) \| ([^|]*) \|", text, flags=re.M)
    assert len(rows) > 15
    command_line, config_file = load_train_config(None, []), TrainConfig()
    checked = 0
    for keys, on_command_line, in_a_file in rows:
        if not on_command_line.strip():  # e.g. model.<field>: no default of its own
            continue
        names = [k.strip(" `") for k in keys.split(",")]
        for column, config in ((on_command_line, command_line), (in_a_file, config_file)):
            values = column.split(",") if len(names) > 1 else [column]
            values = [v.strip(" `") for v in values]
            for name, value in zip(names, values):
                section, _, field = name.partition(".")
                actual = getattr(config.data, field) if section == "data" else getattr(config, name)
                assert str(actual) == value or _same(actual, value), (name, value, actual)
                checked += 1
    assert checked > 30


def _same(actual, documented: str) -> bool:
    if isinstance(actual, dict):
        return documented == "{" + ", ".join(f"{k}: {v}" for k, v in actual.items()) + "}"
    if isinstance(actual, bool):
        return documented == str(actual).lower()
    return isinstance(actual, float) and float(documented) == actual
