"""The training loop: set up (or resume) a run, step, log, evaluate, checkpoint, stop cleanly."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings

import jax
import yaml

from yoco_jax import sharding
from yoco_jax.data.tokenizer_resolver import TOKENIZER_FILE, load_tokenizer
from yoco_jax.errors import ConfigError
from yoco_jax.inference import placement
from yoco_jax.train.batches import GlobalBatches
from yoco_jax.train.checkpoint import Checkpointer, check_compatible
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.lock import RunLock
from yoco_jax.train.logging import MetricsLogger
from yoco_jax.train.memory import check_memory
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.run import Run
from yoco_jax.train.run_folder import clear_run, inputs, portable, save_tokenizer
from yoco_jax.train.signals import StopSignal
from yoco_jax.train.step import Trainer


def train(config: TrainConfig, *, restart: bool = False) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    from yoco_jax.config import get_config

    model_config = get_config(config.model, **config.model_overrides)
    tokenizer = load_tokenizer(config.tokenizer)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size is "
            f"{model_config.vocab_size}; set model.vocab_size={tokenizer.vocab_size} or more"
        )
    mesh = _mesh(config, model_config)
    with RunLock(config.output_dir):  # before anything in the folder is read or written
        if restart:
            clear_run(config.output_dir, restart=True, keep=inputs(config))
        with sharding.use_mesh(mesh):  # once per run: every trace, step and save sees the mesh
            return _train_in_mesh(config, model_config, tokenizer, mesh)


def _train_in_mesh(config: TrainConfig, model_config, tokenizer, mesh) -> dict:
    from yoco_jax.data.corpus import resolve_sources
    from yoco_jax.data.pipeline import eval_documents
    from yoco_jax.model import build_model

    trainer = Trainer(
        build_model(model_config),
        make_optimizer(config),
        learning_rate_schedule(config),
        mesh,
        grad_accum=config.grad_accum,
        loss_chunk=config.loss_chunk,
        document_resets=config.document_resets,
    )
    check_memory(config, model_config, trainer)
    sources = resolve_sources(config.data.path, config.data.kind)  # reads and checks every file
    batches = _batches(config, tokenizer, trainer, "train", sources)
    held_out = config.data.eval_fraction > 0 and eval_documents(sources, config.data.eval_fraction)
    if config.data.eval_fraction > 0 and not held_out:
        _print(
            f"note: data.eval_fraction={config.data.eval_fraction} holds out no document (a "
            "source of one document keeps it for training): no held-out loss "
            "(data.eval_fraction=0 silences this)"
        )
    eval_batches = (
        _batches(config, tokenizer, trainer, "eval", sources).take(config.eval_batches)
        if held_out
        else []
    )
    checkpointer = Checkpointer(
        config.output_dir, keep=config.keep_checkpoints, async_save=config.async_checkpointing
    )
    resumed = _resume(config, model_config, tokenizer, trainer, checkpointer, batches)
    if resumed is None:  # logs of a run stopped before its first checkpoint belong to nothing
        clear_run(config.output_dir, restart=False, keep=inputs(config))
        start, state = 0, trainer.init(config.seed)
    else:
        start, state = resumed
    saved_config = {
        "model": dataclasses.asdict(model_config),
        "train": portable(config.to_dict(), config.output_dir),
        "tokenizer": save_tokenizer(tokenizer, config.output_dir),
    }
    _announce(config, model_config, trainer, state, mesh, start)
    logger = MetricsLogger(config.output_dir, start)  # drops what was logged after `start`
    if start == config.steps:
        _print(
            f"nothing to do: the run in {config.output_dir} is already at steps={start} "
            "(raise steps to train longer)"
        )
        logger.close()
        checkpointer.close()
        return {}
    stop = StopSignal()
    run = Run(config, model_config, trainer, state, logger)
    saved, data_state = start, None
    try:
        for step in range(start, config.steps):
            data_state = batches.get_state()  # before the batch: what a save after an error needs
            run.step(next(batches))
            done = step + 1
            stopping = stop.requested(synchronize=done % config.log_every == 0)
            due = config.checkpoint_every and done % config.checkpoint_every == 0
            if due or stopping or done == config.steps:
                run.flush()  # checks the last step's loss before anything is saved
                checkpointer.save(done, run.state, batches.get_state(), saved_config)
                saved = done
            if eval_batches and (done == config.steps or _every(done, config.eval_every)):
                run.evaluate(done, eval_batches)
            if stopping:
                signal_name = stop.received or "a signal to another process"
                _print(f"{signal_name}: saved step {done} in {checkpointer.directory}; exiting")
                break
        run.flush()
    except Exception as error:
        if not isinstance(error, FloatingPointError):  # a non-finite step: no save (see Run)
            _save_after_error(run, checkpointer, saved, data_state, saved_config)
        raise
    finally:
        stop.restore()
        run.close()
        checkpointer.wait()
        checkpointer.close()
        logger.close()
    if run.finished(config.steps):
        _print(
            f"done: {config.steps} steps, checkpoints in {checkpointer.directory}\n"
            f'sample from it:  python infer.py --checkpoint {config.output_dir} --prompt "def "'
        )
    return run.last_metrics


def _mesh(config: TrainConfig, model_config):
    """The device mesh; a layout that does not fit the devices or the model (a Transformer split
    over `context`) is a config error (exit 2)."""
    try:
        mesh = sharding.make_mesh(config.mesh)
        placement.check_mesh(model_config, mesh)
        sharding.check_batch_divides(
            config.batch_size // config.grad_accum,
            mesh,
            "the micro-batch (batch_size / grad_accum)",
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return mesh


def _resume(config, model_config, tokenizer, trainer, checkpointer, batches):
    """(step, state) of the newest intact checkpoint this run can continue, or None."""

    def check(step: int, saved: dict) -> None:
        check_compatible(saved["model"], model_config)
        _check_tokenizer(saved.get("tokenizer"), tokenizer, config.output_dir)
        if config.steps < step:
            raise ConfigError(
                f"steps={config.steps} is below step {step} of the checkpoint in "
                f"{config.output_dir}: nothing to do; ask for more steps to continue it, or start "
                "over with --restart (or another output_dir)"
            )

    found = checkpointer.restore_latest(trainer.abstract_state, check)
    if found is None:
        return None
    step, state, data_state, saved = found
    before, given = saved["train"]["data"]["path"], config.to_dict()["data"]["path"]
    now = portable(config.to_dict(), config.output_dir)["data"]["path"]
    if before not in (now, given):  # older checkpoints stored the path as given
        warnings.warn(
            f"resuming step {step} of {config.output_dir} with data.path={given!r}, but it was "
            f"trained on {before!r}: the new data is read from its start",
            stacklevel=2,
        )
    else:
        batches.set_state(data_state)
    return step, state


def _check_tokenizer(saved, tokenizer, output_dir: str) -> None:
    """The checkpoint's tokenizer (its sha256; older runs: the folder's copy) must be this one."""
    copy = os.path.join(output_dir, TOKENIZER_FILE)
    if isinstance(saved, dict):
        path, sha256 = os.path.join(output_dir, saved["path"]), saved["sha256"]
    else:
        path, sha256 = copy, _file_sha256(copy)
    if sha256 and sha256 != tokenizer.sha256:
        raise ValueError(
            f"the checkpoint in {output_dir} was trained with the tokenizer {path} (sha256 "
            f"{sha256[:12]}), not {tokenizer.path} (sha256 {tokenizer.sha256[:12]}): resume with "
            f"tokenizer={copy} (its copy), or start over with --restart (or another output_dir)"
        )


def _save_after_error(run, checkpointer, saved: int, data_state: dict, saved_config) -> None:
    """Saves the last completed step before an error ends the run (single process: a save is
    collective, and the other processes may not have failed)."""
    if jax.process_count() > 1 or data_state is None:
        return
    try:
        run.flush()
        if run.done > saved:
            checkpointer.save(run.done, run.state, data_state, saved_config)
            checkpointer.wait()
            _print(
                f"error after step {run.done}: saved it in {checkpointer.directory}; fix "
                "the cause and run the same command to resume"
            )
    except Exception as error:  # the original error is what the user needs to see
        _print(f"error after step {run.done}; could not save it either ({error})")


def _batches(config: TrainConfig, tokenizer, trainer: Trainer, split, sources) -> GlobalBatches:
    return GlobalBatches(
        config.data,
        tokenizer,
        trainer.batch_sharding,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        shards=config.data_shards,
        seed=config.seed,
        split=split,
        sources=sources,
    )


def _file_sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _announce(config, model_config, trainer, state, mesh, start) -> None:
    n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))
    _print(
        f"model {config.model}: {n_params / 1e6:.2f}M params; mesh {dict(mesh.shape)} over "
        f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} "
        f"process(es); batch {config.batch_size} x {config.seq_len} tokens"
    )
    data = config.data
    _print(
        f"settings: model={config.model} tokenizer={config.tokenizer} data.path={data.path} "
        f"data.eval_fraction={data.eval_fraction} steps={config.steps} "
        f"learning_rate={config.learning_rate:g} schedule={config.schedule} "
        f"warmup_steps={config.warmup_steps} min_lr_ratio={config.min_lr_ratio:g} "
        f"checkpoint_every={config.checkpoint_every} eval_every={config.eval_every} "
        f"output_dir={config.output_dir} (all: {config.output_dir}/config.yaml)"
    )
    _print(f"resuming from step {start}" if start else f"starting at step 0, seed {config.seed}")
    if jax.process_index() == 0:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "config.yaml"), "w") as f:
            model = dataclasses.asdict(model_config)
            yaml.safe_dump({"train": config.to_dict(), "model": model}, f, sort_keys=False)


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _print(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
