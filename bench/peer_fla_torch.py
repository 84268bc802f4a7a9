"""The peer's side of bench/peer_fla.py (PyTorch + flash-linear-attention): fla's
`chunk_simple_gla` kernel and its YOCOForCausalLM built with our architecture, timed as
bench/peer_fla.py describes. Runs in its own process. Without a CUDA GPU (--smoke on a CPU) only
the parameter count and the check run, the check through fla's pure-torch reference recurrence.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.peer_fla import time_runs

NEEDS_GPU = "needs a CUDA GPU (fla's kernels are Triton)"


def fla_config(arch: dict, max_len: int):
    """fla's YOCOConfig for our architecture: the same layers and widths, interleaved rotary
    with the official YOCO frequencies, fla's fused norms, SwiGLU and cross-entropy."""
    from fla.models import YOCOConfig

    if arch["sliding_window"] is not None or arch["arch"] != "yoco":
        raise ValueError("the fla peer is built for YOCO with a gated-retention self-decoder")
    rope = {"rope_theta": arch["rope_theta"], "rope_inv_freq": "yoco"}
    return YOCOConfig(
        hidden_size=arch["dim"],
        num_hidden_layers=arch["n_layers"],
        num_self_decoder_layers=arch["n_layers"] // 2,
        intermediate_size=arch["hidden_dim"],
        vocab_size=arch["vocab_size"],
        norm_eps=arch["norm_eps"],
        max_position_embeddings=max_len,
        self_decoder_attn={"type": "gated_retention", "num_heads": arch["n_self_heads"], **rope},
        cross_decoder_attn={
            "num_heads": arch["n_attn_heads"],
            "num_kv_heads": arch["n_attn_kv_heads"],
            **rope,
        },
        tie_word_embeddings=False,
    )


class Side:
    def __init__(self, spec: dict):
        self.spec, self.sizes, self.arch = spec, spec["sizes"], spec["arch"]
        self.smoke = spec["smoke"]
        self.gpu = torch.cuda.is_available()
        if not self.gpu and not self.smoke:
            raise RuntimeError("no CUDA GPU visible to torch")
        try:
            import fla
        except ImportError as error:
            raise RuntimeError(
                f"flash-linear-attention is not importable ({error}): put its wheels on "
                "PYTHONPATH (see bench/peer_fla.py)"
            ) from None
        self.version = fla.__version__
        self.max_len = max(max(self.sizes["prefill_lengths"]), self.sizes["train_length"])
        self.model = None
        self.tuned = set()  # which kernel directions have been autotuned (first calls)

    def info(self) -> dict:
        import triton
        from fla.models import YOCOForCausalLM

        with torch.device("meta"):
            params = sum(p.numel() for p in YOCOForCausalLM(self._config()).parameters())
        device = torch.cuda.get_device_name() if self.gpu else "cpu"
        framework = f"torch {torch.__version__}, triton {triton.__version__}, fla {self.version}"
        return {"device": device, "framework": framework, "params": params, "chunk": 64}

    def estimate(self, case: str, t: int) -> float:
        if self.smoke:
            return 1.0
        fwd = 0 if "fwd" in self.tuned else 35  # Triton autotuning of the chunk kernels
        bwd = 0 if "bwd" in self.tuned else 50
        if case == "prefill":  # the first builds the model; fla's modules autotune too
            return fwd + (3 + 4 * t / 2**17) + (0 if self.model is not None else 20)
        return {
            "kernel_fwd": fwd + 3 + 4 * t / 2**17,
            "kernel_bwd": fwd + bwd + 5 + 8 * t / 2**17,
            "check": 3 + fwd,
            "decode": 15 + fwd,
            "train": 30 + fwd + bwd,
        }[case]

    def recover(self) -> None:
        if self.model is not None:
            self.model.zero_grad(set_to_none=True)
            self.model.eval()
        if self.gpu:
            torch.cuda.empty_cache()

    def run(self, case: str, t: int) -> dict:
        if case != "check" and not self.gpu:
            return {"skipped": NEEDS_GPU}
        if case.startswith("kernel"):
            return self.kernel(t, backward=case == "kernel_bwd")
        return getattr(self, case)(t)

    def _config(self):
        return fla_config(self.arch, self.max_len)

    def _model(self):
        if self.model is None:
            from fla.models import YOCOForCausalLM

            with torch.device("cuda"):
                self.model = YOCOForCausalLM(self._config()).to(torch.bfloat16).eval()
        return self.model

    def _synced(self, fn) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def _tokens(self, batch: int, t: int):
        return torch.randint(0, self.arch["vocab_size"], (batch, t), device="cuda")

    def kernel(self, t: int, backward: bool) -> dict:
        from fla.ops.simple_gla import chunk_simple_gla

        h = self.arch["n_self_heads"]
        torch.manual_seed(t)
        q, k, v, do = (
            torch.randn(1, t, h, self.arch["dim"] // h, device="cuda", dtype=torch.bfloat16)
            for _ in range(4)
        )
        g = F.logsigmoid(torch.randn(1, t, h, device="cuda")) / 16
        if backward:
            inputs = [x.requires_grad_() for x in (q, k, v, g)]

            def fn():
                for x in inputs:
                    x.grad = None
                chunk_simple_gla(*inputs)[0].backward(do)
        else:

            def fn():
                with torch.inference_mode():
                    chunk_simple_gla(q, k, v, g)

        timing = time_runs(lambda: self._synced(fn))
        self.tuned.update(["fwd", "bwd"] if backward else ["fwd"])
        return {**timing, "ms": 1e3 * timing["seconds"], "tokens_per_s": t / timing["seconds"]}

    def check(self, t: int) -> dict:
        data = np.load(self.spec["check_inputs"])
        device = "cuda" if self.gpu else "cpu"
        q, k, v = (torch.tensor(data[n], device=device).to(torch.bfloat16) for n in "qkv")
        g = torch.tensor(data["g"], device=device)
        with torch.inference_mode():
            if self.gpu:
                from fla.ops.simple_gla import chunk_simple_gla

                out, state = chunk_simple_gla(q, k, v, g, output_final_state=True)
                self.tuned.add("fwd")
            else:
                from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

                out, state = naive_recurrent_simple_gla(q, k, v, g, output_final_state=True)
        state = state.float() * q.shape[-1] ** -0.5  # fla scales q, we scale k
        path = Path(self.spec["check_dir"]) / "fla.npz"
        np.savez(path, out=out.float().cpu().numpy(), state=state.cpu().numpy())
        return {"saved": path.name, "kernel": "chunk_simple_gla" if self.gpu else "naive"}

    def prefill(self, t: int) -> dict:
        """One forward over the prompt with the cache on, cross-decoder at the last token."""
        model, ids = self._model(), self._tokens(1, t)

        def fn():
            with torch.inference_mode():
                model(input_ids=ids, use_cache=True, skip_cross_decoder=True)

        timing = time_runs(lambda: self._synced(fn), repeats=3 if t <= 2**17 else 2)
        self.tuned.add("fwd")
        return {**timing, "tokens_per_s": t / timing["seconds"]}

    def decode(self, t: int) -> dict:
        """`decode_steps` greedy steps of eager forwards with past_key_values after a t-token
        prefill; each timed run continues the last one's cache (t grows by 4 * steps at most)."""
        model, steps = self._model(), self.sizes["decode_steps"]
        with torch.inference_mode():
            out = model(input_ids=self._tokens(1, t), use_cache=True, skip_cross_decoder=True)
            state = [out.past_key_values, out.logits[:, -1:].argmax(-1)]

            def fn():
                cache, token = state
                for _ in range(steps):
                    out = model(input_ids=token, past_key_values=cache, use_cache=True)
                    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                state[:] = [cache, token]

            timing = time_runs(lambda: self._synced(fn))
        step_s = timing["seconds"] / steps
        return {**timing, "ms_per_token": 1e3 * step_s, "tokens_per_s": 1 / step_s, "batch": 1}

    def train(self, t: int) -> dict:
        """Forward + backward of the mean next-token cross-entropy (labels shifted inside)."""
        model, batch = self._model(), self.sizes["train_batch"]
        ids = self._tokens(batch, t)
        model.train()

        def fn():
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()

        try:
            timing = time_runs(lambda: self._synced(fn))
        finally:
            self.recover()
        self.tuned.update(["fwd", "bwd"])
        return {**timing, "tokens_per_s": batch * t / timing["seconds"], "batch": batch}
