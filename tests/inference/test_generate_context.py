"""The context check counts the positions generation really uses (issue 15): the last new token
is returned, never fed back, so a prompt that fills max_len still gets one new token."""

import numpy as np
import pytest

import yoco_jax
from yoco_jax.inference import decode, generate, prefill
from yoco_jax.inference.decode_loop import start_decode

MAX_LEN = 16


@pytest.fixture(scope="module")
def model():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", n_layers=2), seed=5)


def greedy_reference(model, prompt, steps):
    """Argmax of the full forward, recomputed over the whole sequence at every step (one shape:
    the sequence right-padded to MAX_LEN, which a causal model ignores)."""
    tokens = list(prompt)
    for _ in range(steps):
        padded = np.zeros((1, MAX_LEN), np.int32)
        padded[0, : len(tokens)] = tokens
        tokens.append(int(np.argmax(model.logits(padded)[0, len(tokens) - 1])))
    return tokens[len(prompt) :]


def test_a_prompt_that_fills_the_context_gets_one_token(model):
    rng = np.random.default_rng(0)
    full, short = rng.integers(3, model.config.vocab_size, (2, MAX_LEN)).tolist()
    short = short[:12]
    # Row 0 fills the cache and gets one token; row 1 keeps decoding beside it (12 + 4 - 1).
    logits, cache = prefill(model, [full, short], max_len=MAX_LEN)
    state = decode(model, start_decode(logits, cache, [1, 4]))
    tokens, n_out = np.asarray(state.tokens), np.asarray(state.n_out)
    assert n_out.tolist() == [1, 4]
    assert tokens[0, :1].tolist() == greedy_reference(model, full, 1)
    assert tokens[1, :4].tolist() == greedy_reference(model, short, 4)
    assert generate(model, full, 1, max_len=MAX_LEN).tokens == greedy_reference(model, full, 1)
    with pytest.raises(ValueError, match="the last new token takes no cache position"):
        generate(model, full, 2, max_len=MAX_LEN)
