"""Remat policies with named activations (model/block.py): each keeps exactly the tensors its
names tag, in both layer layouts, and every policy leaves logits and gradients unchanged."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import yoco_jax
from yoco_jax.errors import ConfigError
from yoco_jax.model import build_model
from yoco_jax.model.block import REMAT_POLICIES

B, T = 2, 21  # T is not a multiple of the retention chunk (16 in yoco-tiny)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (B, T)))
NAMED = {
    "save_mixer_out": ("mixer_out",),
    "save_qkv_and_mixer_out": ("qkv", "mixer_out"),
    "save_all_named": ("qkv", "mixer_out", "mlp_hidden", "residual"),
}


def _config(**overrides):
    return yoco_jax.get_config("yoco-tiny", n_layers=4, **overrides)


def _loss(config):
    model = build_model(config)

    def loss(p):
        logits = model.apply({"params": p}, TOKENS)
        return (logits**2).mean(), logits

    return loss


def _loss_logits_grads(config, params):
    return jax.jit(jax.value_and_grad(_loss(config), has_aux=True))(params)


@pytest.fixture(scope="module")
def reference():
    """Scanned yoco-tiny params and their (loss, logits), gradients without remat."""
    params = build_model(_config(scan_layers=True)).init(jax.random.key(1), TOKENS)["params"]
    return params, _loss_logits_grads(_config(scan_layers=True), params)


def _saved(policy: str, scan: bool) -> tuple[int, list[str]]:
    """(elements the backward keeps from the forward, their descriptions), traced, not run."""
    config = _config(remat=policy, scan_layers=scan)
    params = jax.eval_shape(build_model(config).init, jax.random.key(1), TOKENS)["params"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(lambda p: _loss(config)(p)[0], params)
    lines = out.getvalue().splitlines()
    shapes = [re.match(r"\w+\[([\d,]*)\]", line).group(1) for line in lines]
    return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes), lines


def _named_elements(names) -> int:
    """What the names tag, counted from the architecture: per self-decoder (retention) layer
    q, k, v [B, T, H, Dh] and the gate [B, T, D]; per cross layer its q [B, T, D]; per layer
    the mixer output [B, T, D], the two FFN projections [B, T, hidden] and the mid-layer residual
    [B, T, D]."""
    cfg = _config()
    half, d = cfg.half_layers, cfg.dim
    per_name = {
        "qkv": half * (3 * cfg.n_self_heads * cfg.self_head_dim + d) + half * d,
        "mixer_out": cfg.n_layers * d,
        "mlp_hidden": cfg.n_layers * 2 * cfg.hidden_dim,
        "residual": cfg.n_layers * d,
    }
    return B * T * sum(per_name[n] for n in names)


def test_the_config_accepts_every_policy_and_names_them_on_error():
    for policy in ("none", *REMAT_POLICIES):
        assert _config(remat=policy).remat == policy
    with pytest.raises(ConfigError, match="save_qkv_and_mixer_out"):
        _config(remat="save_qkv")


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("policy", sorted(NAMED))
def test_named_policy_keeps_exactly_its_names(policy, scan):
    full, _ = _saved("full", scan)
    saved, lines = _saved(policy, scan)
    assert saved - full == _named_elements(NAMED[policy])
    if not scan:  # unrolled, the residuals still carry their names
        kept = {m.group(1) for line in lines if (m := re.search(r"named '(\w+)'", line))}
        assert kept == set(NAMED[policy])
    everything, _ = _saved("none", scan)
    assert saved < everything


@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_every_policy_gives_the_same_logits_and_gradients_under_scan(reference, policy):
    """(Unrolled layers: tests/model/test_model.py.)"""
    params, ((loss, logits), grads) = reference
    (loss_r, logits_r), grads_r = _loss_logits_grads(
        _config(scan_layers=True, remat=policy), params
    )
    np.testing.assert_allclose(logits_r, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))
