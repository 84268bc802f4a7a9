"""Two processes on localhost (2 CPU devices each, gloo collectives) train like one process with
4 devices, and both write, then restore, the same checkpoint."""

import json

import numpy as np
import pytest
from processes import finish, start_train

from yoco_jax import distributed

pytestmark = pytest.mark.slow  # two processes: not in `-m "not slow"`

# A constant learning rate, so a run stopped at step 4 and continued to 8 follows the same
# schedule as a run of 8 steps; data_shards fixes the batches whatever the process count.
RUN = [
    "model=yoco-tiny",
    "model.n_layers=2",
    "model.vocab_size=2048",
    "seq_len=32",
    "batch_size=8",
    "learning_rate=3e-3",
    "schedule=constant",
    "warmup_steps=0",
    "data_shards=2",
    "data.shuffle_window=8",
    "data.eval_fraction=0.25",
    "log_every=1",
    "eval_batches=1",
    "checkpoint_every=2",
    "progress=false",
]


def _start(output_dir, steps, cache, processes, corpus):
    """Starts train.py in `processes` processes (4 devices in all)."""
    args = [*RUN, f"steps={steps}", f"output_dir={output_dir}", f"data.path={corpus}"]
    return start_train(args, processes, cache)


def _losses(output_dir):
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    return np.array([losses[step] for step in sorted(losses)]), sorted(losses)


def test_distributed_initialize_is_a_no_op_for_one_process_and_checks_its_arguments():
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="--coordinator-address, --num-processes and --process-id"):
        distributed.initialize(num_processes=2, process_id=0)


@pytest.mark.slow
def test_two_processes_match_one_and_share_a_checkpoint(tmp_path):
    cache, corpus = tmp_path / "compile_cache", tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # small documents: quick to read, many per process
        (corpus / f"doc{i}.py").write_text(
            f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * (i % 5 + 1)
        )
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    reference_run = _start(one, 8, cache, processes=1, corpus=corpus)  # overlaps the others
    first = finish(_start(two, 4, cache, processes=2, corpus=corpus))
    assert "2 process(es)" in first and "mesh {'data': 4" in first
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2", "4"]
    resumed = finish(_start(two, 8, cache, processes=2, corpus=corpus))  # both restore step 4
    assert "resuming from step 4" in resumed
    finish(reference_run)
    losses, steps = _losses(two)
    reference, reference_steps = _losses(one)
    assert steps == reference_steps == list(range(1, 9))
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert reference[-1] < reference[0]
