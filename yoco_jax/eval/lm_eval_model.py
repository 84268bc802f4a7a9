"""The lm-evaluation-harness model "yoco-jax" (importing this module registers it).

    import yoco_jax.eval.lm_eval_model  # then lm_eval.simple_evaluate(model="yoco-jax", ...)
    lm = YocoLM(checkpoint="runs/demo", batch_size=16)

lm-eval's own `lm_eval` command cannot find models of other packages (lm-eval 0.4 has no plugin
entry point): on the command line use `yoco-eval` (yoco_jax/cli/harness.py).

- `loglikelihood`: context + continuation scored in batches (bucketed shapes, see
  `yoco_jax.eval.scoring`); the exact sum of the continuation's token log-probabilities and
  whether greedy decoding would have produced it.
- `loglikelihood_rolling`: the whole document after one EOS (documents follow an EOS in
  training), scored exactly with chunked prefill: never windowed, never truncated.
- `generate_until`: `yoco_jax.inference.generate` (the jitted decode loop) with the `until`
  strings matched in the text, `max_gen_toks`, greedy unless `do_sample` is true (then
  `temperature`, `top_k`, `top_p`), as lm-eval's Hugging Face model decodes.

Only this module (and the harness command) imports lm_eval, an optional extra.
"""

from __future__ import annotations

import logging

try:  # the class below subclasses lm-eval's, so the extra is needed at import
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:
    raise ImportError(f"the lm-eval model needs lm-eval ({e}): pip install -e '.[eval]'") from e
from tqdm import tqdm

from yoco_jax.data.tokenizer_resolver import check_tokenizer
from yoco_jax.errors import CheckpointError
from yoco_jax.eval.scoring import score_rows
from yoco_jax.inference.generate import generate
from yoco_jax.inference.plan import default_prefill_chunk
from yoco_jax.pretrained import load_handle

log = logging.getLogger(__name__)
_SAMPLING_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


@register_model("yoco-jax")
class YocoLM(TemplateLM):
    """A yoco-jax model (`model=`, or `checkpoint=` any folder `load_pretrained` reads) with its
    tokenizer (`tokenizer=` a .model path or object, default the checkpoint's)."""

    def __init__(
        self,
        checkpoint=None,
        model=None,
        tokenizer=None,
        batch_size=8,
        prefill_chunk=None,
        max_gen_toks: int = 256,
        seed: int = 0,
        dtype: str | None = None,
        allow_unverified: bool = False,
        **unused,  # lm_eval passes device / max_batch_size, which do not apply here
    ):
        super().__init__()
        from yoco_jax.data import load_tokenizer

        if (model is None) == (checkpoint is None):
            raise ValueError("give exactly one of checkpoint=PATH or model=Model")
        if model is None:
            overrides = {"dtype": dtype} if dtype else {}
            model = load_handle(checkpoint, allow_unverified=allow_unverified, **overrides)
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        self.model = model
        self.tok = tokenizer or model.tokenizer
        if self.tok is None:
            raise CheckpointError(
                f"{checkpoint or 'the model'} carries no tokenizer (no tokenizer.model), and "
                "lm-eval tasks are text: pass --tokenizer PATH (tokenizer=PATH in model_args)"
            )
        check_tokenizer(self.tok, model.config.vocab_size)
        if str(batch_size).startswith("auto"):
            batch_size = 8
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        self.prefill_chunk = int(prefill_chunk or default_prefill_chunk())
        self.max_gen_toks = int(max_gen_toks)
        for name in ("prefill_chunk", "max_gen_toks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        self.seed = int(seed)

    # --- tokenization (TemplateLM) --------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(list(tokens))

    # --- requests -------------------------------------------------------------------------

    def _score(self, rows, disable_tqdm: bool, what: str):
        with tqdm(total=len(rows), disable=disable_tqdm, desc=what) as bar:
            return score_rows(
                self.model,
                rows,
                batch_size=self.batch_size,
                prefill_chunk=self.prefill_chunk,
                progress=bar.update,
            )

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """[((context, continuation), context ids, continuation ids)] -> [(sum log p, greedy)]."""
        scored = [r for r in requests if r[2]]
        rows = [list(ctx) + list(cont) for _, ctx, cont in scored]
        results = iter(self._score(rows, disable_tqdm, "loglikelihood"))
        out = []
        for key, _, cont in requests:
            if not cont:  # an empty continuation has probability 1
                out.append((0.0, True))
                continue
            logp, greedy = next(results)
            answer = (float(logp[-len(cont) :].sum()), bool(greedy[-len(cont) :].all()))
            self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The exact log-likelihood of each whole document (after one EOS)."""
        texts = [req.args[0] for req in requests]
        rows = [[self.prefix_token_id] + self.tok_encode(t) for t in texts]
        keep = [i for i, r in enumerate(rows) if len(r) > 1]
        scored = self._score([rows[i] for i in keep], disable_tqdm, "loglikelihood_rolling")
        out = [0.0] * len(rows)
        for i, (logp, _) in zip(keep, scored):
            out[i] = float(logp.sum())
        for text, value in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations, grouped by generation settings, `batch_size` prompts at a time."""
        groups: dict = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            groups.setdefault(self._settings(gen_kwargs), []).append((i, context))
        out: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for settings, items in groups.items():
            until, max_new, temperature, top_k, top_p = settings
            encoded = [(i, self.tok_encode(c) or [self.prefix_token_id]) for i, c in items]
            encoded.sort(key=lambda item: -len(item[1]))  # similar lengths share a batch
            for first in range(0, len(encoded), self.batch_size):
                batch = encoded[first : first + self.batch_size]
                completions = generate(
                    self.model,
                    [tokens for _, tokens in batch],
                    max_new,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    stop=list(until),
                    seed=self.seed,
                    tokenizer=self.tok,
                    prefill_chunk=self.prefill_chunk,
                )
                for (i, _), done in zip(batch, completions):
                    out[i] = done.text
                    key = (requests[i].args[0], requests[i].args[1])
                    self.cache_hook.add_partial("generate_until", key, done.text)
                bar.update(len(batch))
        bar.close()
        return out

    def _settings(self, gen_kwargs: dict) -> tuple:
        """(until strings, max new tokens, temperature, top_k, top_p) of lm-eval gen_kwargs."""
        gen_kwargs = dict(gen_kwargs or {})
        unknown = set(gen_kwargs) - _SAMPLING_KEYS
        if unknown:
            log.warning("yoco-jax ignores generation settings %s", sorted(unknown))
        until = gen_kwargs.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        # lm-eval's HFLM: a temperature without do_sample decodes greedily (do_sample defaults
        # to False in Hugging Face's generate), so only do_sample=True samples.
        sample = gen_kwargs.get("do_sample") is True
        temperature = float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0
        max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        return until, max_new, temperature, gen_kwargs.get("top_k"), gen_kwargs.get("top_p")
