"""A yoco-jax model in flash-linear-attention (issue 22): export it with `--format fla`, load the
folder with fla's `YOCOForCausalLM.from_pretrained` and transformers' `AutoTokenizer`, and
compare with ours on real text (a Python standard library file): the encodings, the logits,
and greedy `generate` in transformers against our greedy decode.

    PYTHONPATH=.:$FLA_SITE python -m bench.fla_bridge RUN OUT --device cuda --dtype bfloat16
    PYTHONPATH=.:$FLA_SITE python -m bench.fla_bridge RUN OUT --device cpu   # fla's torch refs

RUN: a training run or exported folder; OUT: a new folder for the export. On cuda fla runs its
Triton kernels; on cpu its ops are swapped for plain PyTorch (bench/fla_reference.py). Prints
one JSON line: the tokenizers' agreement, the logits' relative max error (ours float32 vs fla in
--dtype), and how many of the --new-tokens greedy tokens agree before the first difference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sysconfig
from pathlib import Path

import numpy as np

TEXT = Path(sysconfig.get_paths()["stdlib"]) / "difflib.py"  # real text, on every machine


def load_fla(folder, device: str = "cpu", dtype: str = "float32"):
    """(fla's YOCOForCausalLM from `folder`, its loading info, the context to run it in)."""
    import torch
    from fla.models import YOCOForCausalLM

    from bench.fla_reference import torch_reference_ops

    ops = torch_reference_ops() if device == "cpu" else contextlib.nullcontext()
    with ops:
        model, info = YOCOForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype), output_loading_info=True
        )
    return model.to(device).eval(), info, torch_reference_ops if device == "cpu" else None


def fla_logits(model, ops, tokens) -> np.ndarray:
    """float32 logits [B, T, vocab] of fla's model for int tokens [B, T] (no cache)."""
    import torch

    with ops() if ops else contextlib.nullcontext(), torch.no_grad():
        ids = torch.as_tensor(np.asarray(tokens), device=model.device)
        return model(input_ids=ids, use_cache=False).logits.float().cpu().numpy()


def fla_greedy(model, ops, prompt: list[int], new_tokens: int, eos_id: int | None) -> list[int]:
    """transformers' greedy `generate` (fla's cache), the new tokens up to eos (excluded)."""
    import torch

    with ops() if ops else contextlib.nullcontext(), torch.no_grad():
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos_id)
    tokens = out[0, len(prompt) :].tolist()
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def relative_error(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def compare(source, out, device="cpu", dtype="float32", new_tokens=32, length=256) -> dict:
    """Exports `source` to `out` (fla layout) and compares fla's side with ours (docstring)."""
    import yoco_jax

    ours = yoco_jax.load_pretrained(source)
    ours.save_fla(out, dtype=dtype)
    from transformers import AutoTokenizer

    text = TEXT.read_text()
    theirs_tokenizer = AutoTokenizer.from_pretrained(out)
    tokens = ours.tokenizer.encode(text)
    model, info, ops = load_fla(out, device, dtype)
    window = np.asarray(tokens[:length])[None]
    prompt = tokens[:64]
    eos = ours.tokenizer.eos_id
    theirs = fla_greedy(model, ops, prompt, new_tokens, eos)
    mine = ours.generate([prompt], max_new_tokens=new_tokens)[0].tokens
    pairs = list(zip(mine, theirs))
    same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    return {
        "device": device,
        "dtype": dtype,
        "loading": {k: sorted(map(str, v)) for k, v in info.items()},
        "tokenizer_equal": theirs_tokenizer.encode(text) == tokens,
        "text_tokens": len(tokens),
        "logits_rel_err": relative_error(fla_logits(model, ops, window), ours.logits(window)),
        "greedy_same_prefix": same,
        "greedy_ours": mine,
        "greedy_fla": theirs,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a training run or exported folder (with its tokenizer)")
    parser.add_argument("out", help="a new folder for the fla export")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    import jax
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "fla_bridge: no CUDA GPU visible to torch: use a GPU, or --device cpu\n")
    jax.config.update("jax_default_matmul_precision", "highest")  # ours in true float32
    print(json.dumps(compare(args.source, args.out, args.device, args.dtype, args.new_tokens)))


if __name__ == "__main__":
    main()
