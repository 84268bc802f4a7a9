"""The benchmark suite at its tiniest sizes: it runs, fills every table, and its analytic FLOP
counts agree with XLA's. No timing assertions (speed is shown in docs/benchmarks.md)."""

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from bench import flops, gpu_perf, peer_fla
from bench.models import extend, param_shapes, random_params
from bench.profiles import get_profile
from bench.runner import Budget, Context, guarded
from bench.suite import main
from yoco_jax.model import init_cache
from yoco_jax.model.cache import tree_bytes

pytestmark = pytest.mark.slow  # the benchmark suites: not in `-m "not slow"`


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = main(
        ["--device", "cpu", "--smoke", "--results-dir", str(out), "--docs-dir", str(out / "docs")]
    )
    return out, results


def test_suite_writes_every_table_and_plot(smoke):
    out, results = smoke
    doc = (out / "docs" / "benchmarks.md").read_text()
    for title in (
        "Targets",
        "Memory: yoco-3b",
        "Prefill latency",
        "Decode throughput",
        "Retention forms",
        "Training step",
    ):
        assert f"### {title}" in doc
    for plot in ("memory", "prefill", "decode", "retention"):
        assert (out / "docs" / f"bench-smoke-{plot}.png").stat().st_size > 1000
    assert json.loads((out / "smoke.json").read_text())["profile"] == "smoke"
    secs = results["sections"]
    # every timed case ran (none skipped or failed at these sizes)
    assert all("speedup" in r for r in secs["prefill"])
    assert all("ratio" in r for r in secs["decode"])
    assert all("seconds" in r["chunkwise"] for r in secs["retention"])
    assert "chunkwise_slope" in secs["retention"][0]
    assert "tokens_per_s" in secs["train"][0]


def test_memory_table_matches_hand_count(smoke):
    _, results = smoke
    row = next(r for r in results["sections"]["memory"] if r["length"] == 1024 * 1024)
    # transformer-3b KV at 1M in bf16: 26 layers x K,V x 8 heads x 128 x 2 bytes per token
    assert row["transformer"]["cache"] == 26 * 2 * 8 * 128 * 2 * 2**20 + 4
    # YOCO: one K/V for the cross-decoder + 13 float32 retention states [24, 128, 128]
    assert row["yoco"]["cache"] == 2 * 8 * 128 * 2 * 2**20 + 13 * 24 * 128 * 128 * 4 + 4
    assert not row["transformer_fits"]


@pytest.mark.parametrize("arch", ["yoco", "transformer"])
def test_prefill_flops_match_xla_cost_analysis(arch):
    """The executed count of a chunked prefill agrees with XLA's count of the compiled chunk."""
    p = get_profile("smoke")
    cfg = p.yoco if arch == "yoco" else p.transformer
    length, chunk = 96, 48  # two prefill chunks of three retention chunks each
    params = random_params(cfg)
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, length))
    tokens = jnp.zeros((1, chunk), jnp.int32)
    counted = 0.0
    for fresh in (arch == "transformer", False):  # first chunk, then one against the cache
        cost = extend.lower(cfg, params, tokens, cache, fresh=fresh).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        counted += cost["flops"]
    analytic = flops.prefill_flops(cfg, length, chunk, executed=True)
    # XLA also counts elementwise work (norms, softmax, rotary), so it may be somewhat higher
    assert 0.85 * analytic < counted < 1.35 * analytic


def test_param_count_matches_pytree():
    for cfg in (get_profile("smoke").yoco, get_profile("smoke").transformer):
        n = flops.param_count(cfg)
        norms = sum(
            x.size
            for path, x in jax.tree_util.tree_leaves_with_path(param_shapes(cfg))
            if "norm" in jax.tree_util.keystr(path)
        )
        total = tree_bytes(param_shapes(cfg)) // 4
        assert n["body"] + n["embed"] + n["head"] + norms == total


def test_exhausted_budget_skips_cases_into_the_tables(tmp_path):
    """With no time left every case is skipped, and the run still writes its tables."""
    results = main(
        [
            "--device",
            "cpu",
            "--smoke",
            "--budget-s",
            "0.001",
            "--results-dir",
            str(tmp_path),
            "--docs-dir",
            str(tmp_path),
            "--sections",
            "prefill,decode,retention,train",
        ]
    )
    secs = results["sections"]
    cases = [r[arch] for r in secs["prefill"] + secs["decode"] for arch in ("yoco", "transformer")]
    cases += [r[form] for r in secs["retention"] for form in ("parallel", "chunkwise")]
    cases += secs["train"]
    assert cases and all("time budget" in c["note"] for c in cases)
    assert "time budget" in (tmp_path / "benchmarks.md").read_text()


def test_a_failing_case_becomes_a_note():
    ctx = Context(get_profile("smoke"), Budget(10, {"prefill": 1}), 1e9, 1e9, None)

    def broken():
        raise RuntimeError("out of memory while allocating 12 GB\nmore detail")

    assert guarded(ctx, "broken case", broken) == {
        "note": "error: RuntimeError: out of memory while allocating 12 GB"
    }


def test_decode_retries_a_failing_kernel_on_the_xla_path(monkeypatch):
    from bench import decode

    real = decode.decode_case

    def pallas_breaks(ctx, cfg, *args):
        if cfg.attention_impl == "pallas":
            raise RuntimeError("Triton lowering failed")
        return real(ctx, cfg, *args)

    monkeypatch.setattr(decode, "decode_case", pallas_breaks)
    p = get_profile("smoke")
    p = dataclasses.replace(p, yoco=dataclasses.replace(p.yoco, attention_impl="pallas"))
    rows = decode.run(Context(p, Budget(100, {"decode": 1}), 1e9, 1e9, None))
    yoco = rows[0]["yoco"]
    assert "tokens_per_s" in yoco and "ratio" in rows[0]
    assert (
        yoco["note"] == "XLA attention; Pallas failed: error: RuntimeError: Triton lowering failed"
    )


def test_gpu_benchmarks_record_out_as_a_placeholder(tmp_path, monkeypatch):
    """Results name `$OUT`, not this machine's folder, so a re-render writes no machine path."""
    perf = gpu_perf.main(["--out", str(tmp_path / "perf"), "--budget-s", "1", "--smoke"])
    assert perf["command"] == "python -m bench.gpu_perf --out $OUT --budget-s 1 --smoke"
    monkeypatch.setattr(peer_fla, "_spawn", lambda *args: "not run (test)")
    argv = [f"--out={tmp_path / 'peer'}", "--budget-s", "1", "--smoke", "--cases", "prefill"]
    peer = peer_fla.main(argv)
    assert (
        peer["command"]
        == "python -m bench.peer_fla --out $OUT --budget-s 1 --smoke --cases prefill"
    )
    for folder in ("perf", "peer"):
        assert str(tmp_path) not in (tmp_path / folder / "results.json").read_text()


def test_no_committed_doc_or_result_names_a_path_of_this_machine():
    root = Path(__file__).resolve().parents[2]
    files = [root / "README.md", *(root / "docs").rglob("*"), *(root / "bench/results").rglob("*")]
    machine_path = re.compile(rb"(?<![\w$.~])/(?:root|work|tmp|home|Users)/")
    named = [
        str(f.relative_to(root))
        for f in files
        if f.is_file() and machine_path.search(f.read_bytes())
    ]
    assert not named, f"machine paths in {named}: write $OUT or a relative path"
