"""The vLLM engine on a real GPU with a real model: the generation contract (token ids in and
out, per-request limits, stops, prefix continuation, seeds, log-probs) and, colocated in a
trainer, weight pushes that are never stale. Skipped unless vLLM is installed with a CUDA GPU and
a model directory is at hand: $PREFIX_RFT_VLLM_TEST_MODEL, else the built-in
qwen2.5-coder-1.5b-instruct if it is already converted in the cache (never downloaded here).
Nothing is faked: without a GPU these tests do not run; tests/test_weight_sync.py checks the same
protocol on CPU with a test engine. Run each test in its own process (vLLM keeps the GPU and its
distributed state for the life of a process):

    python -m pytest -q tests/test_vllm_engine.py -k contract
    python -m pytest -q -s tests/test_vllm_engine.py -k stale
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefix_rft.rollout.engines import vllm as vllm_engine

pytestmark = pytest.mark.skipif(not vllm_engine.available(), reason="needs vLLM and a CUDA GPU")


def _model_dir() -> Path:
    env = os.environ.get("PREFIX_RFT_VLLM_TEST_MODEL")
    if env:
        return Path(env)
    from prefix_rft.builtin_models import QWEN_CODER_1_5B, default_cache_dir

    path = default_cache_dir() / QWEN_CODER_1_5B
    if not (path / ".prefix_rft_conversion.json").is_file():
        pytest.skip(f"no model: set PREFIX_RFT_VLLM_TEST_MODEL or convert {QWEN_CODER_1_5B}")
    return path


def test_contract_of_the_evaluation_engine():
    from prefix_rft.models import load_tokenizer
    from prefix_rft.rollout.engines import (
        EngineSpec,
        GenerationRequest,
        SamplingParams,
        make_engine,
    )
    from prefix_rft.rollout.prompting import encode_prompt

    model_dir = _model_dir()
    tok = load_tokenizer(str(model_dir))
    engine, name = make_engine("vllm", EngineSpec(tok, model_dir=str(model_dir),
                                                  gpu_memory_utilization=0.3, max_model_len=2048,
                                                  enforce_eager=True))
    assert name == "vllm" and not engine.needs_weight_sync
    try:
        prompt = encode_prompt(tok, "What is 12 * 13? Put the answer in \\boxed{}.")
        prefix = tok.encode("We multiply: 12 * 13 =", add_special_tokens=False)
        reqs = [GenerationRequest(prompt, 64), GenerationRequest(prompt, 3),
                GenerationRequest(prompt, 256, prefix_ids=prefix), GenerationRequest(prompt, 0)]
        sampling = SamplingParams(temperature=1.0, seed=3, return_logprobs=True)
        outs = engine.generate(reqs, 2, sampling)
        again = engine.generate(reqs, 2, sampling)
        other = engine.generate(reqs, 2, SamplingParams(temperature=1.0, seed=4))
        assert [len(o) for o in outs] == [2, 2, 2, 2]
        for req, samples in zip(reqs, outs):
            for o in samples:
                assert len(o.token_ids) <= req.max_new_tokens
                assert len(o.logprobs) == len(o.token_ids) and all(x <= 0 for x in o.logprobs)
                if o.finish_reason == "stop":
                    assert o.token_ids[-1] in engine.stop_ids
                    assert not set(o.token_ids[:-1]) & set(engine.stop_ids)
                else:
                    assert len(o.token_ids) == req.max_new_tokens
        assert outs[1][0].finish_reason == "length" and len(outs[1][0].token_ids) == 3
        assert outs[3][0].token_ids == [] and outs[3][0].finish_reason == "length"
        # the prefixed request continues the prefix: the output does not repeat it, and the
        # demo-prefixed answer reaches the product
        cont = tok.decode(outs[2][0].token_ids)
        assert "156" in cont and not cont.lstrip().startswith("We multiply")
        # seeds: vLLM's logits are not batch-invariant (a repeated call reuses the prompt's cached
        # KV blocks), so a long T=1 sample may drift after many tokens; its start may not
        heads = lambda o: [s.token_ids[:4] for samples in o for s in samples]  # noqa: E731
        same = sum(a == b for a, b in zip(heads(outs), heads(again)))
        assert same >= 0.9 * len(heads(outs)), (heads(outs), heads(again))
        assert heads(outs) != heads(other)
        greedy = engine.generate([GenerationRequest(prompt, 400)], 1, SamplingParams(0.0))
        assert "\\boxed{156}" in tok.decode(greedy[0][0].token_ids)
    finally:
        engine.close()


def test_colocated_engine_never_samples_from_stale_weights():
    """A trainer with rollout.engine vllm (colocated, sleep level 2) on the real model: after an
    optimizer step with a large learning rate (RL+SFT loss: the demonstration's NLL term moves
    the weights even where every rollout earns the same reward), vLLM's log-probs of what it samples equal the
    updated policy's to bf16 tolerance and are far from the old policy's; the step's log-prob
    gap metrics are printed (run with -s)."""
    from prefix_rft.core.config import resolve
    from prefix_rft.train.trainer import Trainer
    from tests.test_trainer import _problems
    from tests.test_weight_sync import check_no_stale_weights

    cfg = resolve({
        "method": "rl_sft_loss", "model": {"name_or_path": str(_model_dir()), "dtype": "bfloat16"},
        "data": {"train": "unused"},
        "rollout": {"engine": "vllm", "num_prompts": 4, "group_size": 4, "max_response_len": 64,
                    "vllm": {"gpu_memory_utilization": 0.25, "max_model_len": 1024}},
        "rl": {"steps": 4, "num_minibatches": 1, "micro_batch_size": 8,
               "optim": {"lr": 1e-3, "warmup_ratio": 0.0}},
        "reward": {"num_workers": 0}, "eval": {"num_problems": 0},
    })
    tr = Trainer(cfg, train=_problems(), test=[], progress=False)
    assert type(tr.engine).__name__ == "VLLMEngine" and tr.engine.needs_weight_sync
    warm = tr.rl_step()  # lr warm-up is off: this step already moves the weights
    print({k: v for k, v in warm.items() if k.startswith(("rollout/logprob_gap", "time/"))})
    assert warm["rollout/logprob_gap_mean"] < 0.05, warm
    check_no_stale_weights(tr, tol=0.05)
