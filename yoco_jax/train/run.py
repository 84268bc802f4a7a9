"""One training run's steps as the host sees them: dispatch, progress bar, NaN guard, logs,
held-out loss."""

from __future__ import annotations

import time

import jax

from yoco_jax.train.config import TrainConfig
from yoco_jax.train.logging import flops_per_token, memory_stats, peak_flops


class Run:
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


def _progress_bar(config: TrainConfig, start: int):
    from tqdm import tqdm

    enabled = config.progress and jax.process_index() == 0
    return tqdm(
        total=config.steps, initial=start, disable=not enabled, dynamic_ncols=True, unit="step"
    )
