"""Runs EleutherAI's lm-evaluation-harness on a yoco-jax model (the LM "yoco-jax").

    yoco-eval --checkpoint runs/demo --tasks hellaswag,lambada_openai
    yoco-eval --checkpoint ckpt --tasks my_task --include_path my_tasks/ \\
        --num_fewshot 5 --limit 100 --batch_size 16 --output_path results/ --log_samples

Needs the optional extra: pip install -e '.[eval]'. Runs on one process (see
docs/evaluation.md for several hosts).
"""

from __future__ import annotations

import json
from pathlib import Path

INSTALL_HINT = "pip install -e '.[eval]'"


def import_lm_eval():
    """The lm_eval package and our registered model class, or a clear error naming the fix."""
    try:
        import lm_eval

        from yoco_jax.eval.lm_eval_model import YocoLM
    except ImportError as e:
        raise ImportError(
            f"the harness needs lm-evaluation-harness ({e}): install it with {INSTALL_HINT}"
        ) from e
    return lm_eval, YocoLM


def task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that knows every name in `tasks`: the include_path alone when it holds
    them all (indexing lm-eval's ~15K built-in tasks takes seconds), else everything."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise FileNotFoundError(f"--include_path {include_path} is not a folder")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return _loadable(local, tasks)
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        where = f" nor in {include_path}" if include_path else ""
        raise ValueError(
            f"unknown task(s) {', '.join(unknown)}: not an lm-eval task{where}; list them with "
            "`lm_eval ls tasks`, or pass --include_path DIR holding your task YAML"
        )
    return _loadable(manager, tasks)


def _loadable(manager, tasks: list[str]):
    """`manager`, once lm-eval has built every task (datasets read, docs checked): a task it
    cannot build is a ValueError here, before the model loads, not lm-eval's bare
    StopIteration (an empty data file) or IndexError (an empty answer choice) later."""
    try:
        manager.load(tasks)
    except Exception as e:  # lm-eval and datasets raise many kinds for a bad task
        detail = (str(e).strip().splitlines() or [""])[0][:160]
        raise ValueError(
            f"lm-eval cannot build the task(s) {', '.join(tasks)} ({type(e).__name__}: "
            f"{detail}): check each task's data file holds documents and its answer choices "
            "are non-empty"
        ) from e
    return manager


def check_limit(limit) -> None:
    if limit is not None and limit <= 0:
        raise ValueError(
            f"--limit {limit} evaluates nothing: give a positive count or leave it out"
        )


def evaluate(
    lm,
    tasks: list[str],
    *,
    include_path=None,
    manager=None,
    num_fewshot=None,
    limit=None,
    log_samples=False,
    seed=0,
) -> dict:
    """lm_eval.simple_evaluate on an LM object (e.g. YocoLM) -> its results dict."""
    lm_eval, _ = import_lm_eval()
    check_limit(limit)
    manager = manager or task_manager(tasks, include_path)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=0,
    )


def write_results(results: dict, out: Path, log_samples: bool) -> list[Path]:
    """<out>/results.json (+ <out>/samples_<task>.jsonl with --log_samples)."""
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    dump = lambda x: json.dumps(x, default=handle_non_serializable)
    summary = {k: v for k, v in results.items() if k != "samples"}
    written = [out / "results.json"]
    written[0].write_text(json.dumps(summary, indent=1, default=handle_non_serializable) + "\n")
    for task, samples in (results.get("samples") or {}).items() if log_samples else ():
        path = out / f"samples_{task}.jsonl"
        path.write_text("".join(dump(s) + "\n" for s in samples))
        written.append(path)
    return written
