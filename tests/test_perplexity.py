"""Perplexity by position: chunked exact scoring against a direct full forward; the command."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import yoco_jax
from yoco_jax.cli import perplexity as perplexity_cli
from yoco_jax.data import demo_tokenizer
from yoco_jax.eval import perplexity

ASSET = Path(yoco_jax.__file__).parent / "assets" / "demo_tokenizer.model"
N = 40  # tokens per document: more than two prefill chunks of 16
DOCS = [
    "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(8)),
    "import os\nimport sys\n\n" + "".join(f"print(os.path.join('a', '{i}'))\n" for i in range(9)),
    "short",  # fewer than N tokens: skipped (not a row)
]


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


def save(config_name, path, seed):
    model = yoco_jax.init(yoco_jax.get_config(config_name, vocab_size=2048), seed=seed)
    model.save_official(path)
    shutil.copy(ASSET, path / "tokenizer.model")
    return model


def direct(model, rows, points):
    """Cumulative average NLL from one full forward per row, in float64."""
    curves = []
    for row in rows:
        lp = np.asarray(jax.nn.log_softmax(model.logits(np.array([row]))[0], axis=-1), np.float64)
        nll = -lp[np.arange(len(row) - 1), row[1:]]
        curves.append([nll[:p].mean() for p in points])
    return np.mean(curves, axis=0)


def test_rows_and_positions(tok):
    rows = perplexity.sequences(DOCS, tok, N)
    assert [r[:1] for r in rows] == [[tok.eos_id]] * 2 and all(len(r) == N + 1 for r in rows)
    assert rows[0][1:] == tok.encode(DOCS[0])[:N]
    joined = perplexity.sequences(DOCS, tok, N, concat=True)
    stream = [t for d in DOCS for t in tok.encode(d) + [tok.eos_id]]
    assert [r[1:] for r in joined] == [stream[i : i + N] for i in range(0, len(stream) - N + 1, N)]
    assert perplexity.positions(40, 8) == [8, 16, 32, 40]
    assert perplexity.positions(4096) == [1024, 2048, 4096]


def test_command_equals_a_direct_full_forward(tok, tmp_path, capsys):
    yoco = save("yoco-tiny", tmp_path / "yoco", 0)
    other = save("yoco-tiny", tmp_path / "other", 1)  # the official layout holds YOCO only
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "ppl" / "curve"
    results = perplexity_cli.main(
        [
            "--checkpoint",
            str(tmp_path / "yoco"),
            "--compare",
            str(tmp_path / "other"),
            "--data",
            str(data),
            "--max-length",
            str(N),
            "--first",
            "8",
            "--prefill-chunk",
            "16",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    rows = perplexity.sequences(DOCS, tok, N)
    assert results["documents"] == 2
    written = json.loads(out.with_suffix(".json").read_text())
    assert written == json.loads(json.dumps(results))
    curves = list(written["curves"].values())
    assert list(written["curves"]) == ["yoco (yoco)", "other (yoco)"]
    for model, curve in zip([yoco, other], curves):
        assert curve["positions"] == [8, 16, 32, 40]
        np.testing.assert_allclose(curve["nll"], direct(model, rows, [8, 16, 32, 40]), atol=1e-5)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "2 document(s) of 40 tokens" in capsys.readouterr().out


def test_transformer_equals_a_direct_full_forward(tok):
    model = yoco_jax.init(yoco_jax.get_config("transformer-tiny", vocab_size=2048), seed=2)
    rows = perplexity.sequences(DOCS, tok, N)
    got = perplexity.nll_by_position(model, rows, [8, 40], batch_size=2, prefill_chunk=16)
    np.testing.assert_allclose(got, direct(model, rows, [8, 40]), atol=1e-5)


def test_documents_shorter_than_max_length_are_a_clear_error(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()  # the documents are checked before any model loads
    shutil.copy(ASSET, tmp_path / "ckpt" / "tokenizer.model")
    data = tmp_path / "short.txt"
    data.write_text("just a few words")
    with pytest.raises(SystemExit) as exit_info:
        perplexity_cli.main(
            [
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                str(data),
                "--max-length",
                "512",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no document holds --max-length 512 tokens" in err and "--concat" in err
