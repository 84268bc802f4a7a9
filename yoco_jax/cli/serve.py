"""`yoco-serve` (`python -m yoco_jax serve`): an OpenAI-compatible server (completions, chat,
the tokenizer) over one model.

    yoco-serve --checkpoint runs/demo --port 8000 --slots 16 --max-len 2048
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}'

SIGTERM (or Ctrl-C) stops taking connections, answers the requests in flight, then exits.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from yoco_jax.cli.common import (
    add_unverified_flag,
    available_bytes,
    integer,
    mesh_flag,
    one_line_warnings,
    positive_int,
    reported,
)


def _port(text: str) -> int:
    value = integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port: give 0 to 65535")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yoco-serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--checkpoint", required=True, help="training output or official folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--slots", type=positive_int, default=8, help="requests decoded together")
    p.add_argument("--max-len", type=positive_int, default=2048, help="positions per slot")
    p.add_argument("--queue-limit", type=positive_int, default=64, help="waiting before 503")
    p.add_argument("--prefill-chunk", type=positive_int, default=512, help="tokens per chunk")
    p.add_argument("--block", type=positive_int, default=4, help="tokens per decode block")
    p.add_argument("--cache-dir", help="folder of saved prompt caches requests may name")
    p.add_argument("--tokenizer", help="a sentencepiece .model or 'demo' (default: the run's)")
    p.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
    p.add_argument("--model-name", help="the id /v1/models reports (default: folder name)")
    p.add_argument("--warmup", action="store_true", help="compile every shape before serving")
    p.add_argument(
        "--mesh",
        nargs="+",
        metavar="AXIS=SIZE",
        default=None,
        help="split the model over devices: --mesh tensor=N (the first N devices)",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=512.0,
        help="memory of the automatic prefix cache (0 = off; default 512)",
    )
    p.add_argument(
        "--chat-template",
        help="a Jinja2 chat template file (default: a plain "
        "'User: / Assistant:' format for base models)",
    )
    add_unverified_flag(p)
    return p


def _check_address(host: str, port: int) -> None:
    """Refuses, before the model loads, an address that cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(
            f"--host {host} cannot be resolved ({e.strerror}): give an address "
            "of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise ValueError(
                f"cannot listen on --host {host} --port {port} ({e.strerror}): "
                "choose another port or host"
            ) from None


def _check_flags(args) -> None:
    """Everything that can be checked before the (slow) model load."""
    _check_address(args.host, args.port)
    if args.cache_dir is not None and not Path(args.cache_dir).is_dir():
        raise FileNotFoundError(
            f"--cache-dir {args.cache_dir} is not a folder: create it, or leave the flag out"
        )
    if not args.prefix_cache_mb >= 0:
        raise ValueError(f"--prefix-cache-mb {args.prefix_cache_mb} must be >= 0 (0 = off)")
    if args.chat_template is not None and not Path(args.chat_template).is_file():
        raise FileNotFoundError(f"--chat-template {args.chat_template} is not a file")


def _check_memory(config, slots: int, max_len: int) -> None:
    """Refuses slots x max-len positions of cache that the device cannot hold."""
    from yoco_jax.model.cache import cache_bytes

    need, free = cache_bytes(config, slots, max_len), available_bytes()
    if need > free:
        raise ValueError(
            f"--slots {slots} x --max-len {max_len} positions need a "
            f"{need / 2**30:.1f} GiB cache, more than the {free / 2**30:.1f} GiB "
            "free: lower --max-len or --slots"
        )


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        import uvicorn

        from yoco_jax.serve.app import create_app
        from yoco_jax.serve.chat import ChatTemplate
    except ImportError as e:
        parser.exit(2, f"{parser.prog}: error: {e}; pip install -e '.[serve]'\n")
    from yoco_jax.api import load_pretrained
    from yoco_jax.data.tokenizer_resolver import find_tokenizer
    from yoco_jax.serve.engine import Engine
    from yoco_jax.serve.prefix import PrefixStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    one_line_warnings(parser.prog)
    with reported(parser.prog):  # exit 2 for bad input, 1 when the machine fails
        _check_flags(args)
        overrides = {"dtype": args.dtype} if args.dtype else {}
        model = load_pretrained(
            args.checkpoint, allow_unverified=args.allow_unverified, **overrides
        )
        tokenizer = find_tokenizer(args.checkpoint, model.config.vocab_size, args.tokenizer)
        _check_memory(model.config, args.slots, args.max_len)
        engine = Engine(
            model,
            tokenizer,
            slots=args.slots,
            max_len=args.max_len,
            queue_limit=args.queue_limit,
            prefill_chunk=args.prefill_chunk,
            block=args.block,
            prefix_cache_bytes=int(args.prefix_cache_mb * 2**20),
            mesh=mesh_flag(args.mesh),
        )
        source = None if args.chat_template is None else Path(args.chat_template).read_text()
        template = ChatTemplate(source, tokenizer)
    if tokenizer is None:
        print("no tokenizer: token-id prompts only (--tokenizer PATH)", file=sys.stderr)
    plan = engine.compile_plan()
    print(
        f"compiled shapes (at most): {plan} = {sum(plan.values())}; prompt rungs "
        f"{list(engine.buckets.length)}",
        file=sys.stderr,
    )
    if args.warmup:
        engine.warmup()
    prefixes = PrefixStore(args.cache_dir, model)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = create_app(engine, name, prefixes, template)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
