"""The training run enters the mesh context once; the trainer's steps run inside it (and a
trainer used on its own still traces under its mesh)."""

import jax
import numpy as np
import pytest

from yoco_jax import sharding
from yoco_jax.train.config import load_train_config
from yoco_jax.train.loop import train

RUN = [
    "model=yoco-tiny",
    "model.n_layers=2",
    "model.vocab_size=2048",
    "seq_len=16",
    "batch_size=8",
    "log_every=1",
    "progress=false",
    "steps=3",
    "checkpoint_every=0",
    "data.eval_fraction=0",
    "async_checkpointing=false",
]


def test_a_run_enters_the_mesh_once(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        (docs / f"{i}.txt").write_text(" ".join(rng.choice(["a", "bc", "def"], 80)) + "\n")
    entered, steps_in_mesh = [], []
    real_use_mesh = sharding.use_mesh

    def counting_use_mesh(mesh):
        entered.append(mesh)
        return real_use_mesh(mesh)

    monkeypatch.setattr(sharding, "use_mesh", counting_use_mesh)
    from yoco_jax.train import step as step_module

    real_train_step = step_module.Trainer.train_step

    def watched(self, state, batch):
        steps_in_mesh.append(jax.sharding.get_mesh() == self.mesh)
        return real_train_step(self, state, batch)

    monkeypatch.setattr(step_module.Trainer, "train_step", watched)
    config = load_train_config(None, [*RUN, f"data.path={docs}", f"output_dir={tmp_path / 'run'}"])
    train(config)
    assert len(entered) == 1, entered
    assert steps_in_mesh == [True, True, True]


def test_a_transformer_split_over_context_is_refused(tmp_path, capsys):
    """The Transformer baseline has no context-parallel attention: mesh.context=4 is a usage
    error before anything is written (it used to train without a word)."""
    from yoco_jax.cli.train import main as train_main

    run = tmp_path / "run"
    argv = [
        "model=transformer-tiny",
        "model.vocab_size=2048",
        "mesh.context=4",
        "steps=1",
        "seq_len=16",
        "batch_size=2",
        f"output_dir={run}",
    ]
    with pytest.raises(SystemExit) as exit_:
        train_main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "mesh context=4: the Transformer baseline has no context-parallel attention" in err
    assert not run.exists()
