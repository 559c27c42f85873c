"""The Hugging Face generation engine: token ids in/out, per-row limits, stops, seeds, log-probs."""

from __future__ import annotations

import torch

from prefix_rft import logprobs as lp
from prefix_rft.engines import GenerationRequest, HFEngine, SamplingParams
from prefix_rft.models import tiny_random_model
from prefix_rft.prompting import encode_prompt, stop_token_ids


def _engine(tok, seed=0):
    model = tiny_random_model(len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=seed)
    return HFEngine(model, tok, stop_token_ids(tok), max_batch_size=3), model


def test_prefix_is_continued_and_limits_are_per_row(smol_tokenizer):
    eng, _ = _engine(smol_tokenizer)
    prompt = encode_prompt(smol_tokenizer, "What is 2 + 3?")
    reqs = [GenerationRequest(prompt, 5), GenerationRequest(prompt, 2, prefix_ids=[1014, 1015]),
            GenerationRequest(prompt[:-3], 0)]
    outs = eng.generate(reqs, 2, SamplingParams(temperature=1.0, seed=3))
    assert [len(o) for o in outs] == [2, 2, 2]
    for req, samples in zip(reqs, outs):
        for o in samples:
            assert len(o.token_ids) <= req.max_new_tokens
            if o.finish_reason == "length":
                assert len(o.token_ids) == req.max_new_tokens
            else:
                assert o.token_ids[-1] in eng.stop_ids
    assert outs[2][0].token_ids == [] and outs[2][0].finish_reason == "length"


def test_same_seed_same_tokens_and_caller_rng_untouched(smol_tokenizer):
    eng, _ = _engine(smol_tokenizer)
    prompt = encode_prompt(smol_tokenizer, "What is 1 + 1?")
    reqs = [GenerationRequest(prompt, 6) for _ in range(4)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = eng.generate(reqs, 1, SamplingParams(temperature=1.0, seed=7))
    assert torch.equal(torch.get_rng_state(), before)
    b = eng.generate(reqs, 1, SamplingParams(temperature=1.0, seed=7))
    c = eng.generate(reqs, 1, SamplingParams(temperature=1.0, seed=8))
    ids = lambda outs: [o[0].token_ids for o in outs]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_stop_token_ends_a_row(smol_tokenizer):
    eng, model = _engine(smol_tokenizer)
    prompt = encode_prompt(smol_tokenizer, "What is 1 + 1?")
    greedy = SamplingParams(temperature=0.0)
    free = eng.generate([GenerationRequest(prompt, 10)], 1, greedy)[0][0].token_ids
    assert len(free) == 10
    stop = free[3]  # declare the 4th greedy token a stop id: the row must end at its first use
    first = free.index(stop)
    stopping = HFEngine(model, smol_tokenizer, [stop])
    out = stopping.generate([GenerationRequest(prompt, 10)], 1, greedy)[0][0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free[: first + 1]


def test_engine_logprobs_match_trainer_scoring(smol_tokenizer):
    eng, model = _engine(smol_tokenizer)
    prompts = [encode_prompt(smol_tokenizer, f"What is {k} + 1?") for k in range(3)]
    reqs = [GenerationRequest(p, 6, prefix_ids=[504, 35]) for p in prompts]
    outs = eng.generate(reqs, 1, SamplingParams(temperature=0.7, seed=1, return_logprobs=True))
    for req, samples in zip(reqs, outs):
        assert_logprobs_match_score(model, eng.pad_id, req, samples, temperature=0.7)


def assert_logprobs_match_score(model, pad_id, req, samples, temperature):
    """The engine's per-token log-probs of each sample = the trainer's scoring of the same ids
    (prefix tokens scored too, compared on the generated part only)."""
    for o in samples:
        assert o.logprobs is not None and len(o.logprobs) == len(o.token_ids)
        scored, _ = lp.score(model, [req.prompt_ids], [list(req.prefix_ids) + o.token_ids],
                             pad_id=pad_id, temperature=temperature, micro_batch_size=1,
                             with_entropy=False)
        gen_part = scored[0][len(req.prefix_ids):]
        assert torch.allclose(gen_part, torch.tensor(o.logprobs), atol=1e-4)
