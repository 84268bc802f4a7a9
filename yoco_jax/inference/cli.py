"""The `infer.py` command: generate from a checkpoint, streamed or in JSONL batches.

    python infer.py --checkpoint runs/demo --prompt "def fib(n):" --max-new-tokens 64
    python infer.py --checkpoint runs/demo --prompt-file question.txt --temperature 0.8 --top-p 0.9
    python infer.py --checkpoint runs/demo --input-jsonl prompts.jsonl --output-jsonl out.jsonl

JSONL input: one object per line with "prompt" (text) or "tokens" (ids); other keys are copied
to the output line, which adds "text", "tokens" (generated) and "finish_reason".
A single prompt streams its text to stdout; speed and peak memory go to stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import jax

from yoco_jax import compile_cache
from yoco_jax.config import ConfigError
from yoco_jax.export import CheckpointError
from yoco_jax.inference.generate import DEFAULT_PREFILL_CHUNK, generate
from yoco_jax.inference.tokenizer import find_tokenizer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="training output or official folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help="a file holding the prompt text")
    src.add_argument("--input-jsonl", help="a JSONL file of prompts (a batch)")
    p.add_argument("--output-jsonl", help="where JSONL results go (default stdout)")
    p.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=None, help="stop token id or one-token text")
    p.add_argument("--max-len", type=int, default=None, help="context (cache) length")
    p.add_argument("--batch-size", type=int, default=8, help="JSONL prompts per batch")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK)
    p.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
    p.add_argument("--add-bos", action="store_true", help="prepend BOS to text prompts")
    p.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    compile_cache.add_flag(p)
    return p


def _read_jsonl(path) -> list[dict]:
    items = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON: {e}") from None
            if not isinstance(item, dict) or ("prompt" in item) == ("tokens" in item):
                raise ValueError(f'{path}:{n} needs exactly one of "prompt" (text) or "tokens"')
            items.append(item)
    if not items:
        raise ValueError(f"{path} holds no prompts")
    return items


def _stop(values):
    return None if values is None else [int(v) if v.lstrip("-").isdigit() else v for v in values]


def _peak_memory() -> str:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"device peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return f"host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


class _TextStream:
    """Prints the growing decoded text (decoding all tokens so far keeps spaces and bytes)."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out, self.tokens, self.shown = tokenizer, out, [], ""

    def __call__(self, new_per_row):
        self.tokens += new_per_row[0]
        text = self.tokenizer.decode(self.tokens)
        if text.startswith(self.shown):  # a partial multi-byte char may decode differently
            self.out.write(text[len(self.shown) :])
            self.out.flush()
            self.shown = text


def run(args, out=None, err=None) -> None:
    from yoco_jax.api import load_pretrained

    out, err = out or sys.stdout, err or sys.stderr

    overrides = {"dtype": args.dtype} if args.dtype else {}
    model = load_pretrained(args.checkpoint, **overrides)
    tokenizer = find_tokenizer(args.checkpoint, model.config.vocab_size, args.tokenizer)
    if args.input_jsonl:
        items = _read_jsonl(args.input_jsonl)
    else:
        text = args.prompt if args.prompt is not None else Path(args.prompt_file).read_text()
        items = [{"prompt": text}]
    for item in items:
        if "prompt" in item and tokenizer is None:
            raise ValueError(
                f"no tokenizer found for {args.checkpoint} (vocab {model.config.vocab_size}): "
                "pass --tokenizer PATH, or give token ids in JSONL"
            )
        if "prompt" in item and not item["prompt"]:
            raise ValueError("the prompt is empty: give some text")
    kwargs = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, stop=_stop(args.stop), seed=args.seed, max_len=args.max_len,
        tokenizer=tokenizer, add_bos=args.add_bos, prefill_chunk=args.prefill_chunk,
    )  # fmt: skip

    start, generated = time.perf_counter(), 0
    if not args.input_jsonl:
        stream = None if args.no_stream else _TextStream(tokenizer, out)
        done = generate(model, [items[0]["prompt"]], on_tokens=stream, **kwargs)[0]
        if stream is None or stream.shown != done.text:
            out.write(done.text[len(stream.shown) :] if stream else done.text)
        out.write("\n")
        generated = len(done.tokens)
    else:
        with open(args.output_jsonl, "w") if args.output_jsonl else nullcontext(out) as sink:
            for first in range(0, len(items), args.batch_size):
                batch = items[first : first + args.batch_size]
                prompts = [item.get("prompt", item.get("tokens")) for item in batch]
                for item, done in zip(batch, generate(model, prompts, **kwargs)):
                    result = {**item, "text": done.text, "tokens": done.tokens}
                    sink.write(json.dumps({**result, "finish_reason": done.finish_reason}) + "\n")
                    generated += len(done.tokens)
                sink.flush()
    seconds = time.perf_counter() - start
    err.write(
        f"generated {generated} tokens in {seconds:.2f} s ({generated / seconds:.1f} tokens/s, "
        f"compilation included); {_peak_memory()}\n"
    )


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    compile_cache.enable(args.no_compile_cache)
    try:
        run(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        parser.exit(2, f"infer.py: error: {e}\n")


if __name__ == "__main__":
    main()
