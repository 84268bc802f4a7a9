"""Training: loss, optimizer, step, data feeding, config, checkpoints, and whole runs of train.py
(loss falls; SIGKILL and SIGTERM then resume give the same run bit for bit; guards)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from yoco_jax import sharding
from yoco_jax.config import ConfigError, get_config
from yoco_jax.data import DataConfig, demo_tokenizer, make_iterator
from yoco_jax.model import build_model
from yoco_jax.train.batches import GlobalBatches
from yoco_jax.train.checkpoint import Checkpointer, check_compatible
from yoco_jax.train.config import TrainConfig, load_train_config
from yoco_jax.train.load import load_params
from yoco_jax.train.loop import train
from yoco_jax.train.loss import cross_entropy_sums
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer

pytestmark = pytest.mark.slow  # training runs: not in `-m "not slow"`

ROOT = Path(__file__).resolve().parents[2]
TINY = get_config("yoco-tiny", n_layers=2)


# Loss -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, chunk, tol", [("float32", 5, 1e-5), ("bfloat16", 4, 2e-2)])
def test_chunked_cross_entropy_matches_full_logits(dtype, chunk, tol):
    batch, time_, dim, vocab = 3, 13, 8, 37
    keys = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(keys[0], (batch, time_, dim)).astype(dtype)
    kernel = jax.random.normal(keys[1], (dim, vocab))
    targets = jax.random.randint(keys[2], (batch, time_), 0, vocab)
    mask = (jax.random.uniform(keys[3], (batch, time_)) > 0.3).astype(jnp.float32)

    def reference(h, w):
        logits = h.astype(jnp.float32) @ w.astype(dtype).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.sum(losses * mask)

    def chunked(h, w):
        return cross_entropy_sums(h, w, targets, mask, chunk=chunk)[0]

    np.testing.assert_allclose(
        jax.jit(chunked)(hidden, kernel), reference(hidden, kernel), rtol=tol
    )
    assert cross_entropy_sums(hidden, kernel, targets, mask, chunk=chunk)[1] == mask.sum()
    grads = jax.jit(jax.grad(chunked, (0, 1)))(hidden, kernel)
    for got, want in zip(grads, jax.grad(reference, (0, 1))(hidden, kernel)):
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol
        )


def test_chunked_cross_entropy_never_builds_whole_batch_logits():
    batch, time_, dim, vocab, chunk = 2, 64, 8, 50, 16
    hidden, kernel = jnp.zeros((batch, time_, dim)), jnp.zeros((dim, vocab))
    targets, mask = jnp.zeros((batch, time_), jnp.int32), jnp.ones((batch, time_))
    loss = lambda h, w: cross_entropy_sums(h, w, targets, mask, chunk=chunk)[0]
    program = str(jax.make_jaxpr(jax.value_and_grad(loss, (0, 1)))(hidden, kernel))
    assert f"f32[{batch},{chunk},{vocab}]" in program  # one chunk of logits at a time...
    for whole in (f"{time_},{vocab}]", f"[{batch * time_},{vocab}]"):
        assert whole not in program  # ...never all positions at once


# Optimizer --------------------------------------------------------------------------------------


def test_schedules_warm_up_then_decay():
    base = dict(learning_rate=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    linear = learning_rate_schedule(TrainConfig(schedule="linear", **base))
    cosine = learning_rate_schedule(TrainConfig(schedule="cosine", **base))
    constant = learning_rate_schedule(TrainConfig(schedule="constant", **base))
    for schedule in (linear, cosine, constant):
        assert float(schedule(0)) == 0.0
        np.testing.assert_allclose(schedule(5), 0.5, rtol=1e-6)
        np.testing.assert_allclose(schedule(10), 1.0, rtol=1e-6)
    np.testing.assert_allclose(linear(60), 1.0 - 0.9 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(linear(110), 0.1, rtol=1e-6)
    np.testing.assert_allclose(cosine(60), 0.1 + 0.9 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(cosine(110), 0.1, rtol=1e-6)
    np.testing.assert_allclose(constant(110), 1.0, rtol=1e-6)


def test_adamw_decays_matrices_only_and_clips():
    config = TrainConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", clip_norm=1.0)
    optimizer = make_optimizer(config)
    params = {"kernel": jnp.ones((2, 3)), "norm": jnp.ones((3,))}
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero, optimizer.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["norm"], 0.0)
    # A huge gradient is clipped to norm 1 before Adam: the first step is then -lr * sign.
    huge = {"kernel": jnp.full((2, 3), 1e6), "norm": jnp.zeros((3,))}
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(huge, clip.init(params))
    np.testing.assert_allclose(optax.tree.norm(clipped), 1.0, rtol=1e-6)


# Train step against a plain reference ----------------------------------------------------------


def _random_batch(rng, rows, length, vocab):
    tokens = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": np.ones((rows, length), np.int32),
        "loss_mask": (rng.random((rows, length)) > 0.25).astype(np.float32),
    }


STEP_CONFIG = TrainConfig(learning_rate=1e-2, warmup_steps=1, steps=10)


@pytest.fixture(scope="module")
def trainer():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    optimizer, schedule = make_optimizer(STEP_CONFIG), learning_rate_schedule(STEP_CONFIG)
    return Trainer(build_model(TINY), optimizer, schedule, mesh, grad_accum=2, loss_chunk=6)


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state():
    config = get_config("yoco-tiny", n_layers=2, dtype="bfloat16")
    mesh = sharding.make_mesh({"data": -1})
    trainer = Trainer(build_model(config), make_optimizer(STEP_CONFIG),
                      learning_rate_schedule(STEP_CONFIG), mesh)  # fmt: skip
    state = trainer.abstract_state
    for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf  # int32: Adam's step counter


def test_train_step_matches_a_plain_optax_step(trainer):
    state = trainer.init(seed=0)
    params = jax.device_get(state.params)
    optimizer = make_optimizer(STEP_CONFIG)
    opt_state = optimizer.init(params)

    @jax.jit
    def reference_step(params, opt_state, batch):  # float32 logits of the whole batch at once
        def loss_fn(p):
            logits = trainer.module.apply({"params": p}, batch["inputs"])
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
            return jnp.sum(losses * batch["loss_mask"]) / jnp.sum(batch["loss_mask"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    rng = np.random.default_rng(0)
    for _ in range(2):
        batch = _random_batch(rng, 8, 11, TINY.vocab_size)
        params, opt_state, loss, grad_norm = reference_step(params, opt_state, batch)
        state, metrics = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], grad_norm, rtol=1e-4)
        assert metrics["finite"] and metrics["tokens"] == batch["loss_mask"].sum()
    leaves = zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params))
    for got, want in leaves:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert int(state.step) == 2


def test_non_finite_step_is_not_applied(trainer):
    state = trainer.init(seed=0)
    before = jax.device_get(state)
    batch = _random_batch(np.random.default_rng(0), 8, 11, TINY.vocab_size)
    batch["loss_mask"][0, 0] = np.nan
    state, metrics = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
    assert not metrics["finite"] and not np.isfinite(metrics["loss"])
    assert int(state.step) == 1  # the batch is consumed...
    kept = zip(jax.tree_util.tree_leaves(state[1:3]), jax.tree_util.tree_leaves(before[1:3]))
    for got, want in kept:
        np.testing.assert_array_equal(got, want)  # ...but params and optimizer state are kept


def test_checkpoint_restores_onto_another_mesh(trainer, tmp_path):
    state = trainer.init(seed=0)
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(3, state, {"0": {"position": 7}}, {"note": "x"})
    checkpointer.wait()
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    other = Trainer(trainer.module, trainer.optimizer, trainer.schedule, mesh)
    restored, data_state, config = Checkpointer(str(tmp_path)).restore(3, other.abstract_state)
    assert data_state == {"0": {"position": 7}} and config == {"note": "x"}
    kernel = restored.params["output_projection"]["kernel"]
    assert kernel.sharding == other.state_shardings.params["output_projection"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor") and kernel.sharding.mesh.shape["tensor"] == 4
    pairs = zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state))
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)


# Data feeding -----------------------------------------------------------------------------------


def test_global_batches_concatenate_streams_and_resume_exactly(tmp_path):
    for i in range(12):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}: " + "spam and eggs " * (i + 3))
    tokenizer, data = demo_tokenizer(), DataConfig(path=str(tmp_path), shuffle_window=4)
    batch_sharding = sharding.batch_sharding(sharding.make_mesh({"data": -1}))
    make = lambda: GlobalBatches(data, tokenizer, batch_sharding, batch_size=8, seq_len=16,
                                 shards=2, seed=3)  # fmt: skip
    streams = [
        make_iterator(
            data, tokenizer, seq_len=16, batch_size=4, seed=3, process_index=k, process_count=2
        )  # fmt: skip
        for k in range(2)
    ]
    batches = make()
    uninterrupted = [jax.device_get(next(batches)) for _ in range(5)]
    for batch in uninterrupted:
        parts = [next(stream) for stream in streams]
        for key in ("inputs", "targets", "segment_ids", "loss_mask"):
            np.testing.assert_array_equal(batch[key], np.concatenate([p[key] for p in parts]))
    first = make()
    for _ in range(2):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    resumed = make()
    resumed.set_state(state)
    for want in uninterrupted[2:]:
        np.testing.assert_array_equal(jax.device_get(next(resumed))["inputs"], want["inputs"])
    with pytest.raises(ValueError, match="no state for data streams"):
        resumed.set_state({"0": state["0"]})


# Config -----------------------------------------------------------------------------------------


def test_config_overrides_and_errors(tmp_path):
    config = load_train_config(
        None, ["steps=7", "model.dim=32", "data.path=somewhere", "mesh.fsdp=2", "seed=3"]
    )
    assert (config.steps, config.seed, config.model) == (7, 3, "yoco-demo")
    assert config.model_overrides == {"dim": 32} and config.data.path == "somewhere"
    assert config.mesh == {"data": -1, "fsdp": 2, "context": 1, "tensor": 1}
    assert load_train_config(None, ["mesh={fsdp: -1}"]).mesh == {"fsdp": -1}
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("steps: 3\ndata: {eval_fraction: 0.5}\nmodel_overrides: {n_layers: 2}\n")
    config = load_train_config(str(yaml_path), ["model.dim=16"])
    assert config.steps == 3 and config.data.eval_fraction == 0.5
    assert config.model_overrides == {"n_layers": 2, "dim": 16}
    with pytest.raises(ConfigError, match="unknown config key 'stpes'.*Did you mean 'steps'"):
        load_train_config(None, ["stpes=3"])
    with pytest.raises(ConfigError, match="data: unknown DataConfig keys"):
        load_train_config(None, ["data.paht=x"])
    with pytest.raises(ConfigError, match="multiple of grad_accum"):
        load_train_config(None, ["batch_size=6", "grad_accum=4"])
    with pytest.raises(ConfigError, match="schedule='step'.*linear, cosine, constant"):
        load_train_config(None, ["schedule=step"])
    with pytest.raises(ConfigError, match="no training config 'nope'"):
        load_train_config("nope")


def test_model_config_mismatch_on_restore_is_an_error():
    saved = dict(vars(TINY))
    check_compatible({**saved, "remat": "full", "dtype": "bfloat16"}, TINY)  # runtime only: fine
    with pytest.raises(ValueError, match="dim: checkpoint 32 vs config 64.*--restart"):
        check_compatible({**saved, "dim": 32}, TINY)


# Whole runs of train.py -------------------------------------------------------------------------

STEPS = 60
RUN = ["model=yoco-tiny", "model.n_layers=2", "model.vocab_size=2048", "seq_len=32",
       "batch_size=8", "learning_rate=1e-2", "warmup_steps=2", "log_every=1", "eval_batches=1",
       "progress=false", "data.shuffle_window=8", f"steps={STEPS}",
       "checkpoint_every=10"]  # fmt: skip


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache: the runs share one model, so only the first compiles."""
    return tmp_path_factory.mktemp("compile_cache")


def _start(cache, output_dir, *overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), *RUN, f"output_dir={output_dir}", *overrides]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(process, timeout=180):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _records(output_dir):
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(output_dir):
    """{step: loss}, the last record of each step (a resumed run repeats a few)."""
    return {r["step"]: r["loss"] for r in _records(output_dir) if "loss" in r}


def _last_step(output_dir):
    records = _records(output_dir)
    return records[-1]["step"] if records else 0


def _wait_for(condition, process, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the test could interrupt it"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    output = _finish(_start(compile_cache, output_dir))
    return output_dir, output, _losses(output_dir)


def test_run_learns_and_writes_logs_checkpoints_and_the_infer_command(uninterrupted):
    output_dir, output, losses = uninterrupted
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 1.5, losses  # from ln(2048) = 7.6
    records = _records(output_dir)
    assert {"learning_rate", "grad_norm", "tokens_per_s"} <= set(records[0])
    assert any("eval_loss" in r for r in records)
    assert list((output_dir / "tb").iterdir()), "no TensorBoard events"
    assert (output_dir / "tokenizer.model").exists() and (output_dir / "config.yaml").exists()
    assert f"python infer.py --checkpoint {output_dir}" in output
    assert Checkpointer(str(output_dir)).manager.all_steps() == [40, 50, 60]  # keep 3
    config, params = load_params(str(output_dir))
    assert config.dim == 64 and config.vocab_size == 2048
    assert params["output_projection"]["kernel"].shape == (64, 2048)


def test_sigterm_then_sigkill_then_resume_gives_the_uninterrupted_run(
    uninterrupted, compile_cache, tmp_path
):
    # SIGTERM (preemption): the run saves the step it is at and exits cleanly.
    process = _start(compile_cache, tmp_path)
    _wait_for(lambda: _last_step(tmp_path) >= 3, process)
    process.send_signal(signal.SIGTERM)
    output = _finish(process)
    saved = Checkpointer(str(tmp_path)).latest_step()
    assert f"SIGTERM: saved step {saved}" in output and 3 <= saved < STEPS - 20, output
    # Resume, then SIGKILL once the next periodic checkpoint is on disk and the run is past it.
    process = _start(compile_cache, tmp_path)
    checkpoint = (saved // 10 + 1) * 10
    on_disk = lambda: (tmp_path / "checkpoints" / str(checkpoint)).is_dir()
    _wait_for(lambda: on_disk() and _last_step(tmp_path) > checkpoint + 1, process)
    process.kill()
    process.wait()
    # A save cut off mid-way leaves an unfinished folder: it must never be restored.
    unfinished = tmp_path / "checkpoints" / f"{checkpoint + 10}.orbax-checkpoint-tmp-1234567"
    (unfinished / "state").mkdir(parents=True)
    (unfinished / "state" / "partial").write_bytes(b"cut off")
    output = _finish(_start(compile_cache, tmp_path))
    assert f"resuming from step {checkpoint}\n" in output, output
    # Bit for bit: every step's loss and the final parameters; each step logged once (the rows
    # the killed run wrote past its last checkpoint were dropped on resume).
    assert [r["step"] for r in _records(tmp_path) if "loss" in r] == list(range(1, STEPS + 1))
    assert _losses(tmp_path) == uninterrupted[2]
    _, params = load_params(str(tmp_path))
    _, reference = load_params(str(uninterrupted[0]))
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(got, want)


def test_restart_starts_over_and_repeats_the_run(uninterrupted, compile_cache):
    output_dir, _, losses = uninterrupted
    output = _finish(_start(compile_cache, output_dir, "--restart"))
    assert "starting at step 0" in output
    steps = [r["step"] for r in _records(output_dir) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # the old run's logs are gone
    assert _losses(output_dir) == losses  # same seed, same run


def test_resuming_with_another_model_is_a_clear_error(uninterrupted):
    config = load_train_config(None, [*RUN, f"output_dir={uninterrupted[0]}", "model.dim=32"])
    with pytest.raises(ValueError, match="dim: checkpoint 64 vs config 32.*--restart"):
        train(config)


def test_a_bad_key_on_the_command_line_is_a_usage_error():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "stpes=3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "train.py: error: unknown config key 'stpes'. Did you mean 'steps'?" in result.stderr


# Guards (in-process: they fail before anything compiles, or right after the first steps) ---------


def _config(tmp_path, *overrides):
    return load_train_config(None, [*RUN, f"output_dir={tmp_path}", *overrides])


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="does-not-exist"):
        train(_config(tmp_path, f"data.path={tmp_path}/does-not-exist"))


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match="empty|no .*files|no .*documents"):
        train(_config(tmp_path, f"data.path={tmp_path / 'empty'}"))


def test_batch_that_does_not_divide_over_the_mesh_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size / grad_accum.*=4 does not divide over the 8"):
        train(_config(tmp_path, "batch_size=4", "mesh={data: -1}"))


def test_nan_loss_stops_without_writing_a_bad_checkpoint(tmp_path):
    config = _config(tmp_path, "steps=20", "learning_rate=1e30", "warmup_steps=0",
                     "checkpoint_every=1", "schedule=constant", "clip_norm=0",
                     "data.eval_fraction=0", "async_checkpointing=false")  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite training step .*nan_policy=skip"):
        train(config)
    step = Checkpointer(str(tmp_path)).latest_step()
    assert step is not None and step < 20
    _, params = load_params(str(tmp_path), step)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
