"""The `infer.py` (`yoco-infer`) command: generate from a checkpoint, streamed or in JSONL batches.

    python infer.py --checkpoint runs/demo --prompt "def fib(n):" --max-new-tokens 64
    python infer.py --checkpoint runs/demo --prompt-file question.txt --temperature 0.8 --top-p 0.9
    python infer.py --checkpoint runs/demo --input-jsonl prompts.jsonl --output-jsonl out.jsonl
    python infer.py --checkpoint runs/demo --prompt-file long.txt --mesh context=4

JSONL input: one object per line with "prompt" (non-empty text) or "tokens" (a list of integer
ids); other keys are copied to the output line, which adds "completion" (the generated text;
null without a tokenizer), "completion_tokens" (the generated ids) and "finish_reason".
A single prompt streams its text to stdout; speed and peak memory go to stderr.
The tokenizer is --tokenizer, else the checkpoint folder's tokenizer.model; without one, only
token prompts run. Exit codes: 2 for bad arguments or input files (a one-line error), 1 when
the machine fails (out of memory, a file that cannot be written).
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
from yoco_jax.api import load_pretrained
from yoco_jax.cli.common import (
    add_unverified_flag,
    available_bytes,
    integer,
    mesh_flag,
    one_line_warnings,
    positive_int,
    reported,
)
from yoco_jax.data.tokenizer_resolver import find_tokenizer, no_tokenizer_message
from yoco_jax.inference import placement
from yoco_jax.inference.generate import generate
from yoco_jax.inference.plan import PREFILL_CHUNK_HELP, Buckets, default_prefill_chunk, plan

OUTPUT_KEYS = ("completion", "completion_tokens", "finish_reason")


def _seed(text: str) -> int:
    value = integer(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is not a 64-bit integer")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--checkpoint", required=True, help="training output or official folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help="a file holding the prompt text")
    src.add_argument("--input-jsonl", help="a JSONL file of prompts (a batch)")
    p.add_argument("--output-jsonl", help="where JSONL results go (default stdout)")
    p.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--stop", action="append", default=None, help="stop token id or text")
    p.add_argument("--max-len", type=positive_int, default=None, help="context (cache) length")
    p.add_argument("--batch-size", type=positive_int, default=8, help="JSONL prompts per batch")
    p.add_argument(
        "--prefill-chunk",
        type=positive_int,
        default=None,
        help=PREFILL_CHUNK_HELP,
    )
    p.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
    p.add_argument("--add-bos", action="store_true", help="prepend BOS to text prompts")
    p.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    p.add_argument(
        "--mesh",
        nargs="+",
        metavar="AXIS=SIZE",
        default=None,
        help="device mesh, the axes of train.py's mesh.<axis> (data, fsdp, context, "
        "tensor; -1 = the rest; else the first devices), e.g. --mesh context=4: "
        "prompts and cache split along their length over context",
    )
    add_unverified_flag(p)
    compile_cache.add_flag(p)
    return p


def _read_jsonl(path) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                items.append(_jsonl_item(line, f"{path}:{n}"))
    if not items:
        raise ValueError(f"{path} holds no prompts")
    return items


def _jsonl_item(line: str, where: str) -> dict:
    """One checked input line: exactly one of a non-empty "prompt" string or "tokens" int list."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(item, dict) or ("prompt" in item) == ("tokens" in item):
        raise ValueError(f'{where} needs exactly one of "prompt" (text) or "tokens" (ids)')
    prompt, tokens = item.get("prompt"), item.get("tokens")
    if "prompt" in item and (not isinstance(prompt, str) or not prompt):
        raise ValueError(f'{where}: "prompt" must be non-empty text, got {prompt!r:.60}')
    ids = isinstance(tokens, list) and all(type(t) is int for t in tokens)  # no bool/float
    if "tokens" in item and (not ids or not tokens):
        raise ValueError(
            f'{where}: "tokens" must be a non-empty flat list of integer ids, got {tokens!r:.60}'
        )
    taken = [k for k in OUTPUT_KEYS if k in item]
    if taken:
        raise ValueError(f"{where}: the key {taken[0]!r} is where results go: rename it")
    return item


def _check_paths(args) -> None:
    """Argument files, checked before the (slow) model load."""
    for flag, path in (("--prompt-file", args.prompt_file), ("--input-jsonl", args.input_jsonl)):
        if path is not None and (Path(path).is_dir() or not Path(path).exists()):
            what = "is a folder" if Path(path).is_dir() else "does not exist"  # /dev/stdin is fine
            raise FileNotFoundError(f"{flag} {path} {what}: give a text file")
    if args.output_jsonl is not None:
        out = Path(args.output_jsonl)
        if out.is_dir():
            raise ValueError(f"--output-jsonl {out} is a folder: give a file name")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--output-jsonl: folder {out.parent} does not exist")


def _read_prompts(args) -> list[dict]:
    if args.input_jsonl:
        return _read_jsonl(args.input_jsonl)
    if args.prompt is not None:
        return [_jsonl_item(json.dumps({"prompt": args.prompt}), "--prompt")]
    try:
        text = Path(args.prompt_file).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt-file {args.prompt_file} is not UTF-8 text ({e})") from None
    return [_jsonl_item(json.dumps({"prompt": text}), f"--prompt-file {args.prompt_file}")]


def _stop(values):
    return None if values is None else [int(v) if v.lstrip("-").isdigit() else v for v in values]


def _check_memory(model, token_lists, args, mesh) -> None:
    """Refuses up front a batch whose cache cannot fit (generate would allocate it)."""
    from yoco_jax.model.cache import cache_bytes

    buckets = Buckets()  # what generate uses
    rows = placement.round_rows(buckets.batch_size(min(args.batch_size, len(token_lists))), mesh)
    positions = plan(
        [len(t) for t in token_lists],
        args.max_new_tokens,
        buckets=buckets,
        prefill_chunk=args.prefill_chunk or default_prefill_chunk(),
        max_len=args.max_len,
        multiple=placement.context_size(mesh),
    ).max_len
    need = cache_bytes(model.config, rows, positions) + 4 * rows * positions  # + output ids
    if mesh is not None and jax.devices()[0].platform != "cpu":  # CPU devices share the RAM
        need //= mesh.size  # about: rows over data, K/V over context (small states whole)
    free = available_bytes()
    if need > free:
        raise ValueError(
            f"{rows} rows of {positions} positions (prompt + --max-new-tokens "
            f"{args.max_new_tokens}) need a {need / 2**30:.1f} GiB cache, more than the "
            f"{free / 2**30:.1f} GiB free: lower --max-new-tokens, --max-len or --batch-size"
        )


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
    out, err = out or sys.stdout, err or sys.stderr
    _check_paths(args)
    mesh = mesh_flag(args.mesh)
    if mesh is not None:  # a mesh smaller than the machine leaves devices idle: say so
        shape = " ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
        err.write(f"mesh: {shape} on {mesh.size} of the {jax.device_count()} devices\n")
    items = _read_prompts(args)
    overrides = {"dtype": args.dtype} if args.dtype else {}
    model = load_pretrained(args.checkpoint, allow_unverified=args.allow_unverified, **overrides)
    tokenizer = model.tokenizer
    if args.tokenizer:
        tokenizer = find_tokenizer(None, model.config.vocab_size, args.tokenizer)
    if tokenizer is None and any("prompt" in item for item in items):
        raise ValueError(no_tokenizer_message(args.checkpoint))
    token_lists = [
        tokenizer.encode(item["prompt"], bos=args.add_bos) if "prompt" in item else item["tokens"]
        for item in items
    ]
    _check_memory(model, token_lists, args, mesh)
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=_stop(args.stop),
        seed=args.seed,
        max_len=args.max_len,
        tokenizer=tokenizer,
        prefill_chunk=args.prefill_chunk,
        mesh=mesh,
    )

    start, generated = time.perf_counter(), 0
    if not args.input_jsonl:
        stream = None if args.no_stream else _TextStream(tokenizer, out)
        done = generate(model, token_lists, on_tokens=stream, **kwargs)[0]
        if stream is None or stream.shown != done.text:
            out.write(done.text[len(stream.shown) :] if stream else done.text)
        out.write("\n")
        generated = len(done.tokens)
    else:
        with open(args.output_jsonl, "w") if args.output_jsonl else nullcontext(out) as sink:
            for first in range(0, len(items), args.batch_size):
                batch = slice(first, first + args.batch_size)
                results = generate(model, token_lists[batch], **kwargs)
                for item, done in zip(items[batch], results):
                    result = dict(zip(OUTPUT_KEYS, (done.text, done.tokens, done.finish_reason)))
                    sink.write(json.dumps({**item, **result}) + "\n")
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
    one_line_warnings("infer.py")
    compile_cache.enable(args.no_compile_cache)
    with reported("infer.py", "lower --batch-size, --max-len, --max-new-tokens or --prefill-chunk"):
        run(args)


if __name__ == "__main__":
    main()
