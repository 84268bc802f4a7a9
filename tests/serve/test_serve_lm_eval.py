"""Stock lm-evaluation-harness against the server: `local-completions` (its own HTTP client,
its remote tokenizer through /tokenizer_info and /tokenize, loglikelihood through echo +
logprobs) on a local multiple-choice task equals the in-process yoco-jax lm-eval model, per
choice and in accuracy; loglikelihood_rolling too."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: no hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from lm_eval_tasks import write_task  # noqa: E402

import yoco_jax  # noqa: E402
from yoco_jax.data import demo_tokenizer  # noqa: E402
from yoco_jax.eval.harness import evaluate, import_lm_eval, task_manager  # noqa: E402
from yoco_jax.serve.app import create_app  # noqa: E402
from yoco_jax.serve.background import BackgroundServer  # noqa: E402
from yoco_jax.serve.engine import Engine  # noqa: E402

pytestmark = pytest.mark.slow  # two lm-eval evaluations: not in `-m "not slow"`

MC = [
    {"question": "def f(x):", "choices": ["\n    return x", " pass", "zebra"], "label": 0},
    {"question": "import", "choices": [" os", " the", "42"], "label": 1},
    {"question": "for i in range(3):\n", "choices": ["    print(i)", "pass"], "label": 0},
    {"question": "class A", "choices": [":", "(object):", " = 3"], "label": 2},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = demo_tokenizer()
    model = yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=tok.vocab_size), seed=1)
    engine = Engine(
        model, tok, slots=4, max_len=128, prefill_chunk=32, block=4, prefix_cache_bytes=1 << 24
    )
    server = BackgroundServer(create_app(engine, "tiny"))
    tasks = tmp_path_factory.mktemp("tasks")
    write_task(
        tasks,
        "serve_mc",
        MC,
        output_type="multiple_choice",
        target_delimiter="",
        doc_to_text="{{question}}",
        doc_to_choice="{{choices}}",
        doc_to_target="{{label}}",
        metric_list=[{"metric": "acc"}],
    )
    rows = [{"text": "def main():\n    print('hello')\n" * 3}, {"text": "import os\nx = 1\n"}]
    write_task(
        tasks,
        "serve_ppl",
        rows,
        output_type="loglikelihood_rolling",
        doc_to_text="",
        doc_to_target="{{text}}",
        metric_list=[{"metric": "word_perplexity"}],
    )
    yield model, tok, server, tasks
    server.stop()


def _run(lm, tasks):
    names = ["serve_mc", "serve_ppl"]
    return evaluate(lm, names, manager=task_manager(names, str(tasks)), log_samples=True)


def test_local_completions_equals_the_in_process_model(setup):
    model, tok, server, tasks = setup
    _, YocoLM = import_lm_eval()
    direct = _run(YocoLM(model=model, tokenizer=tok, batch_size=4), tasks)
    args = f"base_url={server.url}/v1/completions,model=tiny,num_concurrent=1,max_retries=1"
    remote = _run(args_model(args), tasks)
    for task in ("serve_mc", "serve_ppl"):
        ours = sorted(direct["samples"][task], key=lambda s: s["doc_id"])
        theirs = sorted(remote["samples"][task], key=lambda s: s["doc_id"])
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            got = [np.ravel(r[0])[0] if task == "serve_mc" else r[0] for r in b["resps"]]
            want = [np.ravel(r[0])[0] if task == "serve_mc" else r[0] for r in a["resps"]]
            np.testing.assert_allclose(
                np.asarray(got, float), np.asarray(want, float), atol=1e-4, rtol=1e-5
            )
            if task == "serve_mc":  # greedy flags agree too
                assert [bool(r[0][1]) for r in b["resps"]] == [bool(r[0][1]) for r in a["resps"]]
    acc = lambda res: res["results"]["serve_mc"]["acc,none"]
    assert acc(remote) == acc(direct)


def args_model(args: str):
    """lm-eval's own `local-completions` model, built from its model_args string as its
    command line does (`--model local-completions --model_args ...`)."""
    import lm_eval.models.openai_completions  # noqa: F401  (registers local-completions)
    from lm_eval.api.registry import get_model

    return get_model("local-completions").create_from_arg_string(args, {"batch_size": 1})
