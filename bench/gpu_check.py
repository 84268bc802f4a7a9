"""One-call GPU check: environment, Pallas kernels and the model against the XLA path on the
real device (not interpret mode). Prints one line per check; never stops at the first failure.
GPU only: without a GPU it says so and exits 2 (the checks would prove nothing on CPU).

    PYTHONPATH=. python bench/gpu_check.py
"""

import importlib
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

if jax.default_backend() != "gpu":
    print(
        f"gpu_check.py: no GPU found (JAX backend {jax.default_backend()!r}, devices "
        f"{jax.devices()}), nothing checked: run it on a GPU machine with jax[cuda12] installed",
        file=sys.stderr,
    )
    sys.exit(2)
RESULTS = []


def run(name, fn, *args):
    """Runs one check, prints [ok]/[FAIL] with its detail, and never raises."""
    start = time.perf_counter()
    try:
        detail, status = fn(*args), "ok"
    except Exception as e:  # report every failure, keep going
        detail, status = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", "FAIL"
        traceback.print_exc(limit=4)
    line = f"[{status}] {name} ({time.perf_counter() - start:.1f}s) {detail or ''}"
    RESULTS.append(line)
    print(line, flush=True)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices(), flush=True)
for mod in (
    "flax",
    "optax",
    "orbax.checkpoint",
    "grain",
    "tensorboardX",
    "jaxtyping",
    "safetensors",
):
    try:
        m = importlib.import_module(mod)
        print(f"  {mod} {getattr(m, '__version__', '?')}")
    except ImportError as e:
        print(f"  {mod} missing ({e})")


def qkv(b, tq, tk, hq, hkv, d, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(ks[0], (b, tq, hq, d), dtype),
        jax.random.normal(ks[1], (b, tk, hkv, d), dtype),
        jax.random.normal(ks[2], (b, tk, hkv, d), dtype),
    )


def flash_case(dtype, tol, tq, tk, hq, hkv, window):
    from yoco_jax.kernels import flash_attention
    from yoco_jax.kernels.reference import attention_reference

    q, k, v = qkv(2, tq, tk, hq, hkv, 128, dtype)
    kernel = lambda q, k, v: flash_attention(q, k, v, window=window)
    reference = lambda q, k, v: attention_reference(q, k, v, window=window)
    loss = lambda fn: lambda q, k, v: (fn(q, k, v).astype(jnp.float32) ** 2).sum()
    grad = lambda fn: jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))
    errs = [rel(jax.jit(kernel)(q, k, v), jax.jit(reference)(q, k, v))]
    errs += [rel(a, b) for a, b in zip(grad(kernel)(q, k, v), grad(reference)(q, k, v))]
    assert max(errs) < tol, errs
    return "max rel err out/dq/dk/dv " + ", ".join(f"{e:.1e}" for e in errs)


for dtype, tol in ((jnp.float32, 2e-3), (jnp.bfloat16, 3e-2)):
    for shape in ((1000, 1000, 24, 8, None), (300, 1100, 8, 1, None), (777, 777, 4, 4, 128)):
        name = f"flash fwd+bwd {jnp.dtype(dtype).name} Tq,Tk,Hq,Hkv,window={shape}"
        run(name, flash_case, dtype, tol, *shape)


def decode_case():
    from yoco_jax.kernels import decode_attention
    from yoco_jax.kernels.reference import decode_attention_reference

    q, k, v = qkv(3, 1, 70000, 24, 8, 128, jnp.bfloat16, seed=1)
    lengths = jnp.array([70000, 12345, 1], jnp.int32)
    a = jax.jit(decode_attention)(q, k, v, lengths)
    b = jax.jit(decode_attention_reference)(q, k, v, lengths)
    err = rel(a, b)
    assert err < 3e-2, err
    return f"rel err {err:.1e}"


def model_outputs(m, tokens):
    """Logits, every parameter gradient, a prefill's logits and one decode step's logits."""
    from yoco_jax.model import init_cache

    apply = lambda params, *a, **k: m.module.apply({"params": params}, *a, **k)
    grads = jax.jit(jax.grad(lambda p: apply(p, tokens).std()))(m.params)
    prefill = jax.jit(lambda p, t, c: apply(p, t, c, fresh=True, method="extend"))
    step = jax.jit(lambda p, t, c: apply(p, t, c, method="extend"))
    first, cache = prefill(m.params, tokens, init_cache(m.config, tokens.shape[0], 512))
    second, _ = step(m.params, tokens[:, :1], cache)
    return [m.logits(tokens), *jax.tree.leaves(grads), first, second]


def model_case(name):
    import yoco_jax

    cfg = yoco_jax.get_config(name, dim=256, n_attn_heads=4, n_attn_kv_heads=2)
    xla = yoco_jax.init(yoco_jax.config.replace_checked(cfg, attention_impl="xla"))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 300)))
    expected = model_outputs(xla, tokens)
    got = model_outputs(xla.replace(attention_impl="pallas"), tokens)
    errs = [rel(a, b) for a, b in zip(got, expected)]
    assert max(errs) < 1e-3, errs
    return f"max rel err {max(errs):.1e} (logits, every grad, prefill, decode)"


run("decode kernel, ragged lengths, S=70000", decode_case)
for name in ("yoco-tiny", "yoco-swa-tiny", "transformer-tiny"):
    run(f"model {name}: pallas == xla (float32)", model_case, name)
print("\n=== summary")
print("\n".join(RESULTS))
