"""Every Python block of README.md and docs/inference.md runs as written, alone (a reader copies
one block), in a folder where `runs/demo` is a small model with the demo tokenizer, as after
`python train.py`."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import yoco_jax
from yoco_jax.data import demo_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/inference.md")


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


CASES = [(doc, i) for doc in DOCS for i in range(len(python_blocks(doc)))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding runs/demo: random yoco-tiny weights (vocab 2048) + the demo tokenizer."""
    config = yoco_jax.get_config("yoco-tiny", vocab_size=2048)
    shapes = jax.eval_shape(lambda: yoco_jax.init(config).params)  # no compilation
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
    folder = tmp_path_factory.mktemp("docs")
    yoco_jax.Model(config, params, demo_tokenizer()).save_official(folder / "runs" / "demo")
    return folder


def test_the_docs_have_python_blocks():
    assert [doc for doc, _ in CASES].count("README.md") >= 2
    assert [doc for doc, _ in CASES].count("docs/inference.md") >= 3


@pytest.mark.parametrize("doc,index", CASES)
def test_python_block_runs_as_written(doc, index, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    code = compile(python_blocks(doc)[index], f"{doc} python block {index + 1}", "exec")
    exec(code, {"__name__": "__main__"})  # a fresh namespace: the block's own imports only
