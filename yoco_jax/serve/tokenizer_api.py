"""The tokenizer over HTTP, in the shapes lm-evaluation-harness's remote tokenizer (and vLLM)
use, so clients count and score tokens exactly as the server does:

    GET  /tokenizer_info  -> {"eos_token", "bos_token", "pad_token", "chat_template",
                              "model_max_length", "vocab_size"}
    POST /tokenize   {"prompt": str, "add_special_tokens": bool = false}
                     -> {"tokens", "count", "max_model_len"}
    POST /detokenize {"tokens": [int]} -> {"prompt": str}

`/tokenize` encodes as the completions endpoint encodes a text prompt (no BOS; true prepends
it), except that a text that is exactly a special token ("</s>") is that token's id (clients
find the EOS id this way). No BOS token is reported: documents start after an EOS in training.
"""

from __future__ import annotations

from yoco_jax.serve.http import JSONResponse, Route, error_response, read_json
from yoco_jax.serve.schema import ApiError, check_text


def tokenizer_routes(tokenizer, chat_template: str, max_len: int, body_limit: int) -> list:
    """The three routes (each a 400 naming the problem when the server has no tokenizer)."""

    def specials() -> dict[str, int]:
        ids = (tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id)
        return {tokenizer.piece(i): i for i in ids if i >= 0}

    def need_tokenizer():
        if tokenizer is None:
            raise ApiError("this model has no tokenizer: start the server with --tokenizer")

    async def info(request):
        try:
            need_tokenizer()
        except ApiError as e:
            return error_response(e)
        piece = tokenizer.piece
        info = {
            "eos_token": piece(tokenizer.eos_id),
            # None: models trained here never see BOS (a document follows an EOS), so clients
            # that prefix BOS when the server names one (lm-eval) use the EOS, as we do.
            "bos_token": None,
            "pad_token": piece(tokenizer.pad_id),
            "chat_template": chat_template,
            "model_max_length": max_len,
            "vocab_size": tokenizer.vocab_size,
        }
        return JSONResponse(info)

    async def tokenize(request):
        try:
            need_tokenizer()
            body = await read_json(request, body_limit)
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
                raise ApiError('the body must be {"prompt": "text"}', "prompt", "invalid_type")
            text = check_text(body["prompt"], "prompt")
            add = body.get("add_special_tokens", False)
            if not isinstance(add, bool):
                raise ApiError("add_special_tokens must be true or false", "add_special_tokens")
            special = specials().get(text)
            tokens = [special] if special is not None else tokenizer.encode(text, bos=add)
        except ApiError as e:
            return error_response(e)
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": max_len})

    async def detokenize(request):
        try:
            need_tokenizer()
            body = await read_json(request, body_limit)
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
                raise ApiError('the body must be {"tokens": [ids]}', "tokens", "invalid_type")
            bad = [t for t in tokens if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise ApiError(f"token ids {bad[:5]} lie outside the tokenizer", "tokens")
        except ApiError as e:
            return error_response(e)
        return JSONResponse({"prompt": tokenizer.decode(tokens)})

    return [
        Route("/tokenizer_info", info),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
