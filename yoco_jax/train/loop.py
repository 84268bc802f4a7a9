"""The training loop: set up (or resume) a run, step, log, evaluate, checkpoint, stop cleanly."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import time

import jax
import numpy as np
import yaml

from yoco_jax import sharding
from yoco_jax.train.batches import GlobalBatches
from yoco_jax.train.checkpoint import Checkpointer, check_compatible
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.logging import MetricsLogger, flops_per_token, memory_stats, peak_flops
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer


class StopSignal:
    """Records SIGTERM / SIGINT so the loop can checkpoint and exit between steps (preemption).

    A second SIGINT interrupts at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.received: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def requested(self, synchronize: bool) -> bool:
        """Whether any process got a signal (`synchronize`: agree across processes, a
        collective every process must join at the same step)."""
        if jax.process_count() == 1:
            return self.received is not None
        if not synchronize:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(np.array([self.received is not None])).any())

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, *, restart: bool = False) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    from yoco_jax.config import get_config
    from yoco_jax.model import build_model

    model_config = get_config(config.model, **config.model_overrides)
    tokenizer = load_tokenizer(config.tokenizer)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size is "
            f"{model_config.vocab_size}; set model.vocab_size={tokenizer.vocab_size} or more"
        )
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divides(config.batch_size // config.grad_accum, mesh,
                                 "the micro-batch (batch_size / grad_accum)")  # fmt: skip
    trainer = Trainer(
        build_model(model_config),
        make_optimizer(config),
        learning_rate_schedule(config),
        mesh,
        grad_accum=config.grad_accum,
        loss_chunk=config.loss_chunk,
    )
    batches = _batches(config, tokenizer, trainer, "train")
    eval_batches = (
        _batches(config, tokenizer, trainer, "eval").take(config.eval_batches)
        if config.data.eval_fraction > 0
        else []
    )
    if restart:
        _clear_run(config.output_dir)
    checkpointer = Checkpointer(
        config.output_dir, keep=config.keep_checkpoints, async_save=config.async_checkpointing
    )
    saved_config = {"model": dataclasses.asdict(model_config), "train": config.to_dict(),
                    "tokenizer": _save_tokenizer(tokenizer, config.output_dir)}  # fmt: skip

    start = checkpointer.latest_step()
    if start is None:
        start = 0
        state = trainer.init(config.seed)
    else:
        check_compatible(checkpointer.read_config(start)["model"], model_config)
        state, data_state, _ = checkpointer.restore(start, trainer.abstract_state)
        batches.set_state(data_state)
    _announce(config, model_config, trainer, state, mesh, start)

    logger = MetricsLogger(config.output_dir)
    stop = StopSignal()
    run = _Run(config, model_config, trainer, state, logger)
    try:
        for step in range(start, config.steps):
            run.step(next(batches))
            done = step + 1
            stopping = stop.requested(synchronize=done % config.log_every == 0)
            due = config.checkpoint_every and done % config.checkpoint_every == 0
            if due or stopping or done == config.steps:
                run.flush()  # checks the last step's loss before anything is saved
                checkpointer.save(done, run.state, batches.get_state(), saved_config)
            if eval_batches and (done == config.steps or _every(done, config.eval_every)):
                run.evaluate(done, eval_batches)
            if stopping:
                signal_name = stop.received or "a signal to another process"
                _print(f"{signal_name}: saved step {done} in {checkpointer.directory}; exiting")
                break
        run.flush()
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


class _Run:
    """Dispatches steps and reports each one a step late, so the host never waits on the
    device between steps (the next step is queued before the previous metrics are read)."""

    def __init__(self, config, model_config, trainer, state, logger):
        self.config, self.trainer, self.state, self.logger = config, trainer, state, logger
        self.tokens_per_step = config.batch_size * config.seq_len
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
        matmul_params = n_params - model_config.vocab_size * model_config.dim  # not the lookup
        self.flops_per_step = self.tokens_per_step * flops_per_token(
            matmul_params, model_config.n_layers, model_config.dim, config.seq_len
        )
        self.peak = peak_flops(jax.devices()[0])
        self.pending = None
        self.last_time = time.perf_counter()
        self.last_metrics: dict = {}
        self.skipped = 0
        start = int(state.step)
        self.done = start
        self.progress = _progress_bar(config, start)

    def step(self, batch: dict) -> None:
        self.state, metrics = self.trainer.train_step(self.state, batch)
        self.flush()
        self.pending = (self.done + 1, metrics)

    def flush(self) -> None:
        """Reports the pending step: progress bar, NaN guard, logs."""
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        elapsed, self.last_time = now - self.last_time, now
        self.done = step
        if not metrics.pop("finite"):
            self._non_finite(step, metrics)
        tokens_per_s = self.tokens_per_step / max(elapsed, 1e-9)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if step % self.config.log_every and step != self.config.steps:
            return
        logged = {**metrics, "tokens_per_s": tokens_per_s, "step_time_s": elapsed}
        if self.config.nan_policy == "skip":
            logged["skipped_steps"] = self.skipped
        if self.peak:
            flops_per_s = self.flops_per_step / max(elapsed, 1e-9)
            logged["mfu"] = flops_per_s / (self.peak * jax.device_count())
        logged.update(memory_stats())
        self.logger.log(step, logged)
        self.last_metrics = logged

    def evaluate(self, step: int, batches: list[dict]) -> None:
        loss_sum = count = 0.0
        for batch in batches:
            s, n = jax.device_get(self.trainer.eval_loss_sums(self.state.params, batch))
            loss_sum, count = loss_sum + float(s), count + float(n)
        eval_loss = loss_sum / max(count, 1.0)
        self.logger.log(step, {"eval_loss": eval_loss})
        self.last_metrics = {**self.last_metrics, "eval_loss": eval_loss}
        if jax.process_index() == 0:
            self.progress.write(f"step {step}: eval loss {eval_loss:.4f}")

    def _non_finite(self, step: int, metrics: dict) -> None:
        what = f"loss {metrics['loss']}, grad norm {metrics['grad_norm']}"
        if self.config.nan_policy == "stop":
            raise FloatingPointError(
                f"non-finite training step {step} ({what}); its update was not applied and no "
                "checkpoint holds it. Lower learning_rate, check the data, or set "
                "nan_policy=skip to skip such steps"
            )
        self.skipped += 1
        self.progress.write(f"step {step}: {what}; update skipped ({self.skipped} so far)")

    def finished(self, steps: int) -> bool:
        return self.done == steps

    def close(self) -> None:
        self.progress.close()


def load_tokenizer(name_or_path: str):
    from yoco_jax.data import Tokenizer, demo_tokenizer

    return demo_tokenizer() if name_or_path == "demo" else Tokenizer.load(name_or_path)


def _batches(config: TrainConfig, tokenizer, trainer: Trainer, split: str) -> GlobalBatches:
    return GlobalBatches(
        config.data,
        tokenizer,
        trainer.batch_sharding,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        shards=config.data_shards,
        seed=config.seed,
        split=split,
    )


def _save_tokenizer(tokenizer, output_dir: str) -> str:
    """Copies the tokenizer into the run folder (so the folder alone is enough to sample)."""
    target = os.path.join(os.path.abspath(output_dir), "tokenizer.model")
    if jax.process_index() == 0 and tokenizer.path and not os.path.exists(target):
        os.makedirs(output_dir, exist_ok=True)
        shutil.copyfile(tokenizer.path, target)
    return target


def _clear_run(output_dir: str) -> None:
    """--restart: removes the checkpoints and logs of a previous run in `output_dir`."""
    if jax.process_index() == 0:
        for name in ("checkpoints", "tb", "metrics.jsonl", "tokenizer.model"):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("yoco_jax clear run")


def _announce(config, model_config, trainer, state, mesh, start) -> None:
    n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))
    _print(
        f"model {config.model}: {n_params / 1e6:.2f}M params; mesh {dict(mesh.shape)} over "
        f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} "
        f"process(es); batch {config.batch_size} x {config.seq_len} tokens"
    )
    _print(f"resuming from step {start}" if start else f"starting at step 0, seed {config.seed}")
    if jax.process_index() == 0:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "config.yaml"), "w") as f:
            model = dataclasses.asdict(model_config)
            yaml.safe_dump({"train": config.to_dict(), "model": model}, f, sort_keys=False)


def _progress_bar(config: TrainConfig, start: int):
    from tqdm import tqdm

    enabled = config.progress and jax.process_index() == 0
    return tqdm(total=config.steps, initial=start, disable=not enabled, dynamic_ncols=True,
                unit="step")  # fmt: skip


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _print(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
