"""flash-linear-attention's YOCO on a CPU: its Triton ops swapped for plain PyTorch (fla's own
references where it has them), for as long as the context manager is entered.

    with torch_reference_ops():
        model = YOCOForCausalLM.from_pretrained(folder)   # fla's code, unchanged otherwise
        logits = model(input_ids).logits

Swapped: gated retention (fla's `naive_recurrent_simple_gla`, its state stored [Dv, Dk] when
`state_v_first`), rotary (fla's `rotary_embedding_ref` on the cached tables), causal and
one-step attention (softmax attention with the K/V heads repeated for GQA), RMSNorm, the gated
RMSNorm of retention's output and the SwiGLU MLP (their formulas). Packed sequences
(`cu_seqlens`, as transformers' generate passes with an attention mask) run segment by segment.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def _segments(cu_seqlens, total: int) -> list[tuple[int, int]]:
    bounds = [0, total] if cu_seqlens is None else cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _simple_gla(
    q,
    k,
    v,
    g,
    initial_state=None,
    output_final_state=False,
    state_v_first=False,
    cu_seqlens=None,
    scale=None,
    **unused,
):
    """q, k [B, T, H, Dk], v [B, T, H, Dv], g [B, T, H] -> (o [B, T, H, Dv], state or None);
    with cu_seqlens, B = 1 and the segments are the sequences (one state each)."""
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    outs, states = [], []
    for i, (start, end) in enumerate(_segments(cu_seqlens, q.shape[1])):
        rows = slice(None) if cu_seqlens is None else slice(i, i + 1)
        init = None if initial_state is None else initial_state[rows].float()
        if init is not None and state_v_first:
            init = init.transpose(-1, -2)
        o, state = naive_recurrent_simple_gla(
            *(x[:, start:end] for x in (q, k, v, g)),
            scale=scale,
            initial_state=init,
            output_final_state=True,
        )
        outs.append(o)
        states.append(state.transpose(-1, -2) if state_v_first else state)
    return torch.cat(outs, 1), torch.cat(states) if output_final_state else None


def _rotary(x, cos, sin, interleaved=False, seqlen_offsets=0, cu_seqlens=None, **unused):
    """x [B, T, H, D] rotated at positions offset + t (per segment with cu_seqlens)."""
    from fla.modules.rotary import rotary_embedding_ref

    parts = []
    for i, (start, end) in enumerate(_segments(cu_seqlens, x.shape[1])):
        offset = seqlen_offsets
        if torch.is_tensor(offset):
            offset = int(offset[i] if offset.ndim else offset)
        table = slice(offset, offset + end - start)
        parts.append(rotary_embedding_ref(x[:, start:end], cos[table], sin[table], interleaved))
    return torch.cat(parts, 1)


def _softmax_attention(q, k, v, scale=None):
    """q [B, T, H, D], k, v [B, S, Hkv, D], the queries the last T of the S positions."""
    groups = q.shape[2] // k.shape[2]
    k, v = (x.repeat_interleave(groups, dim=2).transpose(1, 2) for x in (k, v))
    t, s = q.shape[1], k.shape[2]
    causal = torch.ones(t, s, dtype=torch.bool).tril(s - t)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=causal, scale=scale)
    return out.transpose(1, 2)


def _parallel_attn(q, k, v, g=None, scale=None, window_size=None, cu_seqlens=None, **unused):
    if g is not None or window_size is not None:
        raise NotImplementedError("the reference attention has no gates or window")
    return torch.cat(
        [
            _softmax_attention(q[:, a:b], k[:, a:b], v[:, a:b], scale)
            for a, b in _segments(cu_seqlens, q.shape[1])
        ],
        1,
    )


def _decoding_one_step(q, k, v, g=None, scale=None, cu_seqlens=None, **unused):
    """q [1, N, H, D]: the last token of each of the N sequences packed in k, v [1, S, Hkv, D]."""
    return torch.cat(
        [
            _softmax_attention(q[:, i : i + 1], k[:, a:b], v[:, a:b], scale)
            for i, (a, b) in enumerate(_segments(cu_seqlens, k.shape[1]))
        ],
        1,
    )


def _rms(x, weight, eps):
    y = x.float() * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps)
    return (y if weight is None else y * weight.float()).to(x.dtype)


def _rms_norm(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    if residual is not None:
        x = x + residual
    y = _rms(x, self.weight, self.eps)
    return (y, x) if prenorm else y


def _rms_norm_gated(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
    if residual is not None or self.activation not in ("swish", "silu"):
        raise NotImplementedError("the reference gated norm: swish gate, no residual")
    return _rms(x, self.weight, self.eps) * F.silu(g.float()).to(x.dtype)


def _gated_mlp(self, x, **unused):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@contextlib.contextmanager
def torch_reference_ops():
    """fla's YOCO runs on plain PyTorch inside this block (module docstring)."""
    import fla.layers.yoco as layer
    from fla.modules import FusedRMSNormGated, GatedMLP, RMSNorm

    swaps = [
        (layer, "chunk_simple_gla", _simple_gla),
        (layer, "fused_recurrent_simple_gla", _simple_gla),
        (layer, "rotary_embedding", _rotary),
        (layer, "parallel_attn", _parallel_attn),
        (layer, "attn_decoding_one_step", _decoding_one_step),
        (RMSNorm, "forward", _rms_norm),
        (FusedRMSNormGated, "forward", _rms_norm_gated),
        (GatedMLP, "forward", _gated_mlp),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, value in swaps:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
