"""lm-evaluation-harness adapter: a local task run offline, checked against direct computations
from `model.logits` / `model.generate`; exact rolling log-likelihood; multi-token stop strings."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: no hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import yoco_jax  # noqa: E402
from yoco_jax.cli import harness as harness_cli  # noqa: E402
from yoco_jax.data import demo_tokenizer  # noqa: E402

ASSET = Path(yoco_jax.__file__).parent / "assets" / "demo_tokenizer.model"
MAX_GEN = 12
GEN_PROMPTS = ["def main():\n", "import os\n"]


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=tok.vocab_size), seed=1)


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    model.save_official(path)
    shutil.copy(ASSET, path / "tokenizer.model")
    return path


def log_probs(model, tokens, width=64):
    """Full-forward log-probs [len(tokens), V]; right-padded to `width` (causal: the padding
    changes nothing before it) so every call shares one compilation."""
    padded = np.zeros((1, max(width, len(tokens))), np.int32)
    padded[0, : len(tokens)] = tokens
    logits = model.logits(padded)[0, : len(tokens)]
    return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def direct_loglikelihood(model, tok, context, continuation):
    """lm-eval's causal split (trailing context spaces move to the continuation), then the sum
    of the continuation's log-probs from one full forward, and whether each is the argmax."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation)
    n_ctx = len(tok.encode(context))
    lp = log_probs(model, whole)
    rows = np.arange(n_ctx - 1, len(whole) - 1)
    targets = np.array(whole[n_ctx:])
    return lp[rows, targets].sum(), bool((lp[rows].argmax(-1) == targets).all())


def greedy_choice(model, tok):
    """(context, a one-token continuation the model predicts greedily and that re-tokenizes)."""
    for context in ["def f(x):", "import", "class A:", "x = 1", "for i in", "return"]:
        first = tok.encode(context)
        best = int(log_probs(model, first)[-1].argmax())
        if tok.encode(context + tok.decode([best])) == first + [best]:
            return context, tok.decode([best])
    raise AssertionError("no context whose greedy token re-tokenizes: pick other contexts")


def write_task(folder: Path, name: str, rows: list[dict], **config) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": name, "dataset_path": "json", "test_split": "test"}
    task["dataset_kwargs"] = {"data_files": {"test": str(data)}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({**task, **config}))


@pytest.fixture(scope="module")
def free_generations(model, tok):
    prompts = [tok.encode(p) for p in GEN_PROMPTS]
    return model.generate(prompts, MAX_GEN, tokenizer=tok)


def two_token_string(tok, tokens):
    """A substring of the text of `tokens` that encodes to 2+ tokens (a multi-token stop)."""
    for k in range(1, len(tokens) - 1):
        text = tok.decode(tokens[k : k + 2])
        if len(tok.encode(text)) >= 2 and text.isprintable():
            return text
    raise AssertionError("no two-token printable string in the generation")


@pytest.fixture(scope="module")
def run(model, tok, ckpt, free_generations, tmp_path_factory):
    """One harness run over a multiple-choice and a generation task (offline), with samples."""
    tasks = tmp_path_factory.mktemp("tasks")
    context, greedy = greedy_choice(model, tok)
    mc = [
        {"question": context, "choices": [greedy, "zebra", "Q"], "label": 0},
        {"question": "import", "choices": ["os", "the", "42"], "label": 1},
        {"question": "for i in range(3):\n", "choices": ["    print(i)", "pass"], "label": 0},
    ]
    write_task(
        tasks,
        "yoco_mc",
        mc,
        output_type="multiple_choice",
        target_delimiter="",
        doc_to_text="{{question}}",
        doc_to_choice="{{choices}}",
        doc_to_target="{{label}}",
        metric_list=[{"metric": "acc"}],
    )
    until = [two_token_string(tok, free_generations[0].tokens), "\n\n"]
    gen = [{"prompt": p, "answer": "pass"} for p in GEN_PROMPTS]
    settings = {"until": until, "max_gen_toks": MAX_GEN, "do_sample": False}
    write_task(
        tasks,
        "yoco_gen",
        gen,
        output_type="generate_until",
        doc_to_text="{{prompt}}",
        doc_to_target="{{answer}}",
        metric_list=[{"metric": "exact_match"}],
        generation_kwargs=settings,
    )
    out = tmp_path_factory.mktemp("out")
    results = harness_cli.main(
        [
            "--checkpoint",
            str(ckpt),
            "--tasks",
            "yoco_mc,yoco_gen",
            "--include_path",
            str(tasks),
            "--batch_size",
            "16",
            "--output_path",
            str(out),
            "--log_samples",
        ]
    )
    return results, out, until


def test_multiple_choice_equals_direct_log_likelihoods(model, tok, run):
    results, out, _ = run
    samples = results["samples"]["yoco_mc"]
    assert len(samples) == 3
    correct, greedy_seen = [], []
    for s in samples:
        direct = [direct_loglikelihood(model, tok, c, x) for c, x in s["arguments"]]
        got = [r[0] for r in s["resps"]]
        np.testing.assert_allclose([g[0] for g in got], [d[0] for d in direct], atol=1e-5, rtol=0)
        assert [bool(g[1]) for g in got] == [d[1] for d in direct]
        greedy_seen += [d[1] for d in direct]
        correct.append(int(np.argmax([d[0] for d in direct])) == s["doc"]["label"])
    assert any(greedy_seen)  # the greedy choice of doc 0 is recognized as greedy
    assert results["results"]["yoco_mc"]["acc,none"] == pytest.approx(np.mean(correct))
    written = json.loads((out / "results.json").read_text())
    assert written["results"]["yoco_mc"]["acc,none"] == pytest.approx(np.mean(correct))
    assert len((out / "samples_yoco_mc.jsonl").read_text().splitlines()) == 3


def test_generate_until_equals_generate_cut_at_the_stop_strings(free_generations, run):
    results, _, until = run
    samples = sorted(results["samples"]["yoco_gen"], key=lambda s: s["doc_id"])
    cut = [
        min([f.text.find(u) for u in until if u in f.text], default=len(f.text))
        for f in free_generations
    ]
    assert cut[0] < len(free_generations[0].text)  # the multi-token stop string did stop row 0
    assert [s["resps"][0][0] for s in samples] == [
        f.text[:c] for f, c in zip(free_generations, cut)
    ]


def test_generate_stops_at_multi_token_strings(model, tok, free_generations):
    stop = two_token_string(tok, free_generations[1].tokens)
    prompts = [tok.encode(p) for p in GEN_PROMPTS]
    stopped = model.generate(prompts, MAX_GEN, tokenizer=tok, stop=[stop])
    for f, s in zip(free_generations, stopped):
        cut = f.text.find(stop)
        assert s.text == (f.text if cut < 0 else f.text[:cut])
        assert s.finish_reason == ("stop" if cut >= 0 else f.finish_reason)
        assert s.tokens == f.tokens[: len(s.tokens)]
        assert s.text.startswith(tok.decode(s.tokens))
        if cut >= 0:  # the tokens stop at the last whole token before the stop string
            assert not s.text.startswith(tok.decode(f.tokens[: len(s.tokens) + 1]))
    assert stopped[1].finish_reason == "stop" and len(stopped[1].tokens) < MAX_GEN


def test_loglikelihood_rolling_is_exact_beyond_the_prefill_chunk(model, tok):
    from lm_eval.api.instance import Instance

    from yoco_jax.eval.lm_eval_model import YocoLM

    lm = YocoLM(model=model, tokenizer=tok, batch_size=2, prefill_chunk=16)
    docs = ["".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(6)), "ok", ""]
    requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    got = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    tokens = [tok.eos_id] + tok.encode(docs[0])
    assert len(tokens) > 3 * 16 + 5  # several chunks and a partial one
    for doc, value in zip(docs[:2], got):
        tokens = [tok.eos_id] + tok.encode(doc)
        lp = log_probs(model, tokens)
        assert value == pytest.approx(lp[np.arange(len(tokens) - 1), tokens[1:]].sum(), abs=1e-4)
    assert got[2] == 0.0


def fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        harness_cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_input_is_a_clear_error(ckpt, tmp_path, capsys, monkeypatch):
    local = tmp_path / "tasks"
    local.mkdir()
    write_task(
        local,
        "t",
        [{"q": "a", "c": ["b"], "l": 0}],
        output_type="multiple_choice",
        doc_to_text="{{q}}",
        doc_to_choice="{{c}}",
        doc_to_target="{{l}}",
    )
    base = ["--checkpoint", str(ckpt), "--include_path", str(local)]
    assert "--limit 0 evaluates nothing" in fails(base + ["--tasks", "t", "--limit", "0"], capsys)
    err = fails(base + ["--tasks", "t,no_such_task_xyz"], capsys)
    assert "unknown task(s) no_such_task_xyz" in err and "--include_path" in err

    bare = tmp_path / "bare"  # an official folder without tokenizer.model (and vocab != demo)
    yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=300)).save_official(bare)
    err = fails(["--checkpoint", str(bare), "--include_path", str(local), "--tasks", "t"], capsys)
    assert "carries no tokenizer" in err and "--tokenizer" in err

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    assert "pip install -e '.[eval]'" in fails(base + ["--tasks", "t"], capsys)
