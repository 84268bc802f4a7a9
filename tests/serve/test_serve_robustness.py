"""The server under hostile input (issues 24 and 26): flags checked before the model loads (exit
2 naming the flag), a capped request body (413), JSON nested too deep, lone surrogates, a huge
top_k, and saved prompt caches that are truncated, unfingerprinted or made by other weights:
each a 4xx answer naming the problem, never a 500, and the server keeps serving."""

import functools
import json
import socket

import httpx
import jax
import pytest

import yoco_jax
from yoco_jax.data import demo_tokenizer
from yoco_jax.inference import generate, prefill, save_cache
from yoco_jax.serve.__main__ import main as serve_main
from yoco_jax.serve.app import create_app
from yoco_jax.serve.background import BackgroundServer
from yoco_jax.serve.engine import Engine
from yoco_jax.serve.prefix import PrefixStore

MAX_LEN = 64


@functools.cache
def tiny():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", dtype="float32", vocab_size=2048), 2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("caches")
    engine = Engine(tiny(), demo_tokenizer(), slots=2, max_len=MAX_LEN, prefill_chunk=32)
    s = BackgroundServer(create_app(engine, "tiny", PrefixStore(cache_dir, tiny())))
    s.cache_dir = cache_dir
    yield s
    s.stop()


def post(server, **kw):
    return httpx.post(server.url + "/v1/completions", timeout=120, **kw)


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_a_body_beyond_the_cap_is_refused_with_413(server):
    body = '{"prompt": "' + "x" * (64 * MAX_LEN + 70_000) + '"}'
    error = error_of(post(server, content=body), 413)
    assert "the request body exceeds" in error["message"] and error["code"] == "body_too_large"
    chunks = (b"x" * 4096 for _ in range(100))  # no Content-Length: counted while read
    assert post(server, content=chunks).status_code == 413


def test_json_nested_too_deep_is_a_400(server):
    error = error_of(post(server, content="[" * 30_000 + "]" * 30_000), 400)
    assert "nested too deeply" in error["message"] and error["code"] == "bad_json"


@pytest.mark.parametrize("field", ["prompt", "stop"])
def test_a_lone_surrogate_is_a_400_naming_the_field(server, field):
    body = {"prompt": "abc", "max_tokens": 2, field: "x\ud800y"}
    raw = json.dumps(body)  # ASCII: the surrogate travels as the JSON escape \ud800
    error = error_of(post(server, content=raw), 400)
    assert error["param"] == field and "lone surrogate" in error["message"]


def test_a_top_k_beyond_the_vocabulary_keeps_every_token(server):
    body = {"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0, "top_k": 10**20}
    out = post(server, json=body)
    assert out.status_code == 200, out.text
    want = generate(tiny(), [5, 6, 7], 3, tokenizer=demo_tokenizer(), max_len=MAX_LEN)
    assert out.json()["choices"][0]["token_ids"] == want.tokens


def _saved_cache(server, name, model, **kw):
    logits, cache = prefill(model, [[5, 6, 7, 8]], max_len=32, prefill_chunk=32)
    return save_cache(server.cache_dir / name, cache, model.config, logits, **kw)


def test_a_cache_of_other_weights_is_refused_as_load_cache_refuses_it(server):
    other = yoco_jax.Model(tiny().config, jax.tree.map(lambda x: x * 1.01, tiny().params))
    _saved_cache(server, "stale.npz", other, params=other.params)
    error = error_of(post(server, json={"prompt": [1], "cache": "stale.npz"}), 400)
    assert error["param"] == "cache" and "prefilled by other weights" in error["message"]
    _saved_cache(server, "bare.npz", tiny())  # no fingerprint: cannot be checked
    error = error_of(post(server, json={"prompt": [1], "cache": "bare.npz"}), 400)
    assert "saved without a fingerprint" in error["message"]
    _saved_cache(server, "good.npz", tiny(), params=tiny().params)
    assert post(server, json={"prompt": [1], "cache": "good.npz", "max_tokens": 1}).is_success


def test_a_truncated_cache_is_a_400(server):
    path = _saved_cache(server, "cut.npz", tiny(), params=tiny().params)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = error_of(post(server, json={"prompt": [1], "cache": "cut.npz"}), 400)
    assert error["param"] == "cache" and "is not a readable cache file" in error["message"]


# --- flags, checked before the model loads -----------------------------------------------------


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--port", "99999"], ["--port", "not a TCP port"]),
        (["--host", "bogus.invalid"], ["--host bogus.invalid cannot be resolved"]),
        (["--cache-dir", "no-such-folder"], ["--cache-dir no-such-folder is not a folder"]),
        (["--slots", "0"], ["--slots", "must be a positive integer"]),
    ],
)
def test_bad_flags_exit_2_before_loading(flags, words, capsys):
    code, line = run_main(["--checkpoint", "no-such-checkpoint", *flags], capsys)
    assert code == 2 and "error:" in line, line
    for word in words:
        assert word in line, line


def test_a_port_in_use_exits_2(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = run_main(["--checkpoint", "x", "--port", port], capsys)
    assert code == 2 and f"cannot listen on --host 127.0.0.1 --port {port}" in line, line


def test_a_max_len_beyond_memory_exits_2_before_allocating(tmp_path, capsys):
    folder = tiny().save_official(tmp_path / "tiny")
    code, line = run_main(["--checkpoint", folder, "--max-len", 10**9, "--port", 0], capsys)
    assert code == 2 and "--max-len 1000000000" in line and "lower --max-len" in line, line
