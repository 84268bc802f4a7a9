"""`yoco-serve` (`python -m yoco_jax serve`): an OpenAI-compatible completions server over one
model.

    yoco-serve --checkpoint runs/demo --port 8000 --slots 16 --max-len 2048
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}'

SIGTERM (or Ctrl-C) stops taking connections, answers the requests in flight, then exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yoco-serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--checkpoint", required=True, help="training output or official folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=int, default=8, help="requests decoded together (batch rows)")
    p.add_argument("--max-len", type=int, default=2048, help="positions per slot: prompt + output")
    p.add_argument("--queue-limit", type=int, default=64, help="waiting requests before 503")
    p.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens per chunk")
    p.add_argument("--block", type=int, default=4, help="tokens per jitted decode block")
    p.add_argument("--cache-dir", help="folder of saved prompt caches requests may name")
    p.add_argument("--tokenizer", help="a sentencepiece .model or 'demo' (default: the run's)")
    p.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
    p.add_argument("--model-name", help="the id /v1/models reports (default: folder name)")
    p.add_argument("--warmup", action="store_true", help="compile every shape before serving")
    return p


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        import uvicorn

        from yoco_jax.serve.app import create_app
    except ImportError as e:
        parser.exit(2, f"{parser.prog}: error: {e}; pip install -e '.[serve]'\n")
    from yoco_jax.api import load_pretrained
    from yoco_jax.cli.common import reported
    from yoco_jax.data.tokenizer_resolver import find_tokenizer
    from yoco_jax.serve.engine import Engine
    from yoco_jax.serve.prefix import PrefixStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with reported(parser.prog):  # exit 2 for bad input, 1 when the machine fails
        model = load_pretrained(args.checkpoint, **({"dtype": args.dtype} if args.dtype else {}))
        tokenizer = find_tokenizer(args.checkpoint, model.config.vocab_size, args.tokenizer)
        engine = Engine(
            model,
            tokenizer,
            slots=args.slots,
            max_len=args.max_len,
            queue_limit=args.queue_limit,
            prefill_chunk=args.prefill_chunk,
            block=args.block,
        )
    if tokenizer is None:
        print("no tokenizer: token-id prompts only (--tokenizer PATH)", file=sys.stderr)
    plan = engine.compile_plan()
    rungs = list(engine.rungs)
    print(
        f"compiled shapes (at most): {plan} = {sum(plan.values())}; prompt rungs {rungs}",
        file=sys.stderr,
    )
    if args.warmup:
        engine.warmup()
    prefixes = PrefixStore(args.cache_dir, model.config)
    app = create_app(engine, args.model_name or Path(args.checkpoint).resolve().name, prefixes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
