"""An independent float64 NumPy evaluation of the official YOCO model, from the paper's equations
and the official state_dict layout (weights `[out, in]`). Written without yoco_jax, to test it."""

import numpy as np


def official_shapes(p: dict) -> dict[str, tuple[int, ...]]:
    """The official state_dict keys and shapes for a params.json dict."""
    d, hid, v = p["dim"], p["hidden_dim"], p["vocab_size"]
    kv = (d // p["n_attn_heads"]) * p["n_attn_kv_heads"]
    shapes = {"embed_tokens.weight": (v, d), "output_projection.weight": (v, d)}
    shapes["layer_norm.weight"] = (d,)
    shapes["cross_decoder.k_proj.weight"] = (kv, d)
    shapes["cross_decoder.v_proj.weight"] = (kv, d)
    shapes["cross_decoder.kv_layer_norm.weight"] = (d,)
    for part in ("self_decoder", "cross_decoder"):
        for i in range(p["n_layers"] // 2):
            pre = f"{part}.layers.{i}."
            names = ["q_proj", "out_proj"]
            if part == "self_decoder":
                names += ["k_proj", "v_proj"]
                if p.get("sliding_window") is None:
                    names += ["g_proj"]
                    shapes[pre + "mixer.gt_proj.weight"] = (p["n_self_heads"], d)
            for n in names:
                shapes[pre + f"mixer.{n}.weight"] = (d, d)
            shapes[pre + "ffn.fc1.weight"] = (hid, d)
            shapes[pre + "ffn.gate.weight"] = (hid, d)
            shapes[pre + "ffn.fc2.weight"] = (d, hid)
            shapes[pre + "mixer_layer_norm.weight"] = (d,)
            shapes[pre + "final_layer_norm.weight"] = (d,)
    return shapes


def random_state_dict(p: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in official_shapes(p).items():
        if key.endswith("norm.weight"):
            out[key] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[key] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return out


def _rms(x, eps, w=None):
    y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
    return y if w is None else y * w


def _rotate(x, theta):  # x [T, H, D]: pairs (2i, 2i+1) rotated by t * theta^(-i/(D/2-1))
    t, _, dh = x.shape
    inv = theta ** -np.linspace(0.0, 1.0, dh // 2)
    ang = np.arange(t)[:, None] * inv
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def _silu(x):
    return x / (1 + np.exp(-x))


def _softmax_attend(q, k, v, allowed):  # q [T,Hq,D], k/v [T,Hk,D], allowed [T,T]
    hq, hk = q.shape[1], k.shape[1]
    out = np.zeros_like(q)
    for h in range(hq):
        kh = h // (hq // hk)
        s = q[:, h] @ k[:, kh].T / np.sqrt(q.shape[-1])
        s = np.where(allowed, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (w / w.sum(-1, keepdims=True)) @ v[:, kh]
    return out


def logits(p: dict, w: dict, tokens: np.ndarray) -> np.ndarray:
    """Float64 logits [B, T, V] of the official YOCO for tokens [B, T]."""
    return np.stack([_one(p, {k: v.astype(np.float64) for k, v in w.items()}, t) for t in tokens])


def _one(p, w, tokens):
    d, eps, theta = p["dim"], p["norm_eps"], p["rope_theta"]
    t = len(tokens)
    lin = lambda x, key: x @ w[key].T
    causal = np.tril(np.ones((t, t), bool))
    x = w["embed_tokens.weight"][tokens] * np.sqrt(d)
    hs = p["n_self_heads"]
    ds = d // hs
    for i in range(p["n_layers"] // 2):
        pre = f"self_decoder.layers.{i}."
        h = _rms(x, eps, w[pre + "mixer_layer_norm.weight"])
        q = _rotate(lin(h, pre + "mixer.q_proj.weight").reshape(t, hs, ds), theta)
        k = _rotate(lin(h, pre + "mixer.k_proj.weight").reshape(t, hs, ds), theta)
        v = lin(h, pre + "mixer.v_proj.weight").reshape(t, hs, ds)
        if p.get("sliding_window") is None:  # gated retention, recurrent form
            gamma = (1 / (1 + np.exp(-lin(h, pre + "mixer.gt_proj.weight")))) ** (1 / 16)
            o = np.zeros((t, hs, ds))
            for head in range(hs):
                state = np.zeros((ds, ds))
                for n in range(t):
                    kn = k[n, head] / np.sqrt(ds)
                    state = gamma[n, head] * state + np.outer(kn, v[n, head])
                    o[n, head] = q[n, head] @ state
            o = _rms(o, eps).reshape(t, d)
            o = _silu(lin(h, pre + "mixer.g_proj.weight")) * o
        else:
            win = p["sliding_window"]
            allowed = causal & (np.arange(t)[None, :] > np.arange(t)[:, None] - win)
            o = _softmax_attend(q, k, v, allowed).reshape(t, d)
        x = x + lin(o, pre + "mixer.out_proj.weight")
        h = _rms(x, eps, w[pre + "final_layer_norm.weight"])
        ffn = _silu(lin(h, pre + "ffn.fc1.weight")) * lin(h, pre + "ffn.gate.weight")
        x = x + lin(ffn, pre + "ffn.fc2.weight")
    ha, hkv = p["n_attn_heads"], p["n_attn_kv_heads"]
    da = d // ha
    hn = _rms(x, eps, w["cross_decoder.kv_layer_norm.weight"])
    k = _rotate(lin(hn, "cross_decoder.k_proj.weight").reshape(t, hkv, da), theta)
    v = lin(hn, "cross_decoder.v_proj.weight").reshape(t, hkv, da)
    for i in range(p["n_layers"] // 2):
        pre = f"cross_decoder.layers.{i}."
        h = _rms(x, eps, w[pre + "mixer_layer_norm.weight"])
        q = _rotate(lin(h, pre + "mixer.q_proj.weight").reshape(t, ha, da), theta)
        x = x + lin(_softmax_attend(q, k, v, causal).reshape(t, d), pre + "mixer.out_proj.weight")
        h = _rms(x, eps, w[pre + "final_layer_norm.weight"])
        ffn = _silu(lin(h, pre + "ffn.fc1.weight")) * lin(h, pre + "ffn.gate.weight")
        x = x + lin(ffn, pre + "ffn.fc2.weight")
    return lin(_rms(x, eps, w["layer_norm.weight"]), "output_projection.weight")
