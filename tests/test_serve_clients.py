"""The server with clients nobody here wrote: the `openai` package (completions with echo,
logprobs, n and prompt lists; chat plain and streamed) and lm-evaluation-harness's stock
`local-completions` model (remote tokenizer, loglikelihood through echo + logprobs).

References: `generate` for each prompt alone, log-softmax of `model.logits` (a full forward),
and the in-process yoco-jax lm-eval model on the same task.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: no hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402
import pytest  # noqa: E402

import yoco_jax  # noqa: E402
from yoco_jax.data import demo_tokenizer  # noqa: E402
from yoco_jax.inference import generate  # noqa: E402
from yoco_jax.serve.app import create_app  # noqa: E402
from yoco_jax.serve.background import BackgroundServer  # noqa: E402
from yoco_jax.serve.chat import ChatTemplate  # noqa: E402
from yoco_jax.serve.engine import Engine  # noqa: E402

CHUNK, MAX_LEN, SLOTS = 32, 128, 4


@functools.cache
def tiny():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", dtype="float32", vocab_size=2048), 1)


@pytest.fixture(scope="module")
def server():
    engine = Engine(
        tiny(),
        demo_tokenizer(),
        slots=SLOTS,
        max_len=MAX_LEN,
        prefill_chunk=CHUNK,
        block=4,
        prefix_cache_bytes=1 << 24,
    )
    s = BackgroundServer(create_app(engine, "tiny"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def full_log_probs(tokens):
    """log-softmax of the full forward's logits [len(tokens), V] (float64 for the sums)."""
    logits = tiny().logits(np.asarray([tokens]))[0]
    return np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)


def test_echo_logprobs_score_the_prompt_like_the_full_forward(client):
    tok = demo_tokenizer()
    text = "def forward(self, x):\n    return x"
    out = client.completions.create(
        model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=3, temperature=0
    )
    choice = out.choices[0]
    ids = tok.encode(text)
    lp = full_log_probs(ids)
    assert choice.text == text and len(choice.logprobs.tokens) == len(ids)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    want = [lp[i - 1, ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(choice.logprobs.token_logprobs[1:], want, atol=1e-4)
    for i in range(1, len(ids)):  # the 3 best of each position, plus the prompt's own token
        top = choice.logprobs.top_logprobs[i]
        best = np.sort(lp[i - 1])[::-1][:3]
        np.testing.assert_allclose(sorted(top.values(), reverse=True)[:3], best, atol=1e-4)
    assert "".join(choice.logprobs.tokens) == text
    assert choice.logprobs.text_offset[:3] == [
        0,
        len(choice.logprobs.tokens[0]),
        sum(map(len, choice.logprobs.tokens[:2])),
    ]
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 0


def test_generated_logprobs_n_and_prompt_lists(client):
    tok, rng = demo_tokenizer(), np.random.default_rng(0)
    prompts = [rng.integers(3, 2048, n).tolist() for n in (5, 40)]
    out = client.completions.create(
        model="tiny", prompt=prompts, max_tokens=6, n=2, temperature=0.8, seed=11, logprobs=2
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for c in out.choices:
        prompt = prompts[c.index // 2]
        # Choice j of a prompt draws like row j of generate with the same seed.
        alone = generate(
            tiny(),
            [prompt] * 2,
            6,
            temperature=0.8,
            seed=11,
            tokenizer=tok,
            prefill_chunk=CHUNK,
            max_len=MAX_LEN,
        )[c.index % 2]
        assert c.text == alone.text
        ids = prompt + alone.tokens
        lp = full_log_probs(ids)
        want = [lp[len(prompt) + t - 1, tok_id] for t, tok_id in enumerate(alone.tokens)]
        np.testing.assert_allclose(c.logprobs.token_logprobs, want, atol=1e-4)
    assert out.usage.prompt_tokens == 45 and out.usage.completion_tokens == 24


def test_unknown_model_and_nulls(client, server):
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-9", prompt="x", max_tokens=2)
    assert error.value.body["code"] == "model_not_found"
    import httpx

    body = {
        "model": "tiny",
        "prompt": "def f",
        "max_tokens": None,
        "stop": None,
        "temperature": 0,
        "logprobs": None,
        "seed": None,
        "n": None,
    }
    out = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert (
        out["usage"]["completion_tokens"]
        == generate(
            tiny(), "def f", 16, tokenizer=demo_tokenizer(), prefill_chunk=CHUNK, max_len=MAX_LEN
        ).tokens.__len__()
    )


def test_chat_plain_and_streamed_equal_generate_on_the_template(client):
    tok = demo_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write a Python function."},
    ]
    prompt = ChatTemplate(None, tok).render(messages)
    assert prompt == "Be brief.\n\nUser: Write a Python function.\n\nAssistant:"
    alone = generate(tiny(), prompt, 10, tokenizer=tok, prefill_chunk=CHUNK, max_len=MAX_LEN)
    out = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    assert out.choices[0].message.content == alone.text
    assert out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(tok.encode(prompt))
    assert out.usage.completion_tokens == len(alone.tokens)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == alone.finish_reason
    assert chunks[-1].usage.completion_tokens == len(alone.tokens)


def test_tokenizer_endpoints(server):
    import httpx

    tok = demo_tokenizer()
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["model_max_length"] == MAX_LEN
    assert "Assistant" in info["chat_template"]
    got = httpx.post(server.url + "/tokenize", json={"prompt": "import os"}).json()
    assert got["tokens"] == tok.encode("import os") and got["count"] == len(got["tokens"])
    eos = httpx.post(server.url + "/tokenize", json={"prompt": "</s>"}).json()["tokens"]
    assert eos == [tok.eos_id]
    back = httpx.post(server.url + "/detokenize", json={"tokens": got["tokens"]}).json()
    assert back["prompt"] == "import os"
    bad = httpx.post(server.url + "/tokenize", json={"text": 1})
    assert bad.status_code == 400 and "prompt" in bad.json()["error"]["message"]


def test_prefix_cache_hits_show_in_usage_and_metrics(client, server):
    import httpx

    shared = list(range(10, 80))  # 70 tokens: chunk boundaries at 32 and 64
    outs = [
        client.completions.create(model="tiny", prompt=shared + [5, i], max_tokens=2, temperature=0)
        for i in (6, 7)
    ]
    assert outs[1].usage.prompt_tokens_details.cached_tokens == 64
    text = httpx.get(server.url + "/metrics").text
    hits = [line for line in text.splitlines() if line.startswith("yoco_prefix_cache_hits_total")]
    assert hits and int(hits[0].split()[1]) >= 1
