"""HF engine sampling: per-row seeds make a row's tokens independent of its batch; the Gumbel-max
sampler draws from softmax(logits / T) with top-p; the static-cache compiled path decodes like the
plain one; returned log-probs are the trainer's.

A 256-token tiny random model (no tokenizer: the engine only needs a pad id) keeps this fast. The
compiled path runs on CPU with the "eager" dynamo backend: the graph capture, static cache, batch
and cache-length buckets are exercised; inductor's code generation (what the GPU uses, ~25 s to
compile on the CI CPU) is not.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import CompileConfig

from prefix_rft.engines import GenerationRequest, HFEngine, SamplingParams
from prefix_rft.engines.hf import _seed_for, gumbel_noise, row_keys, row_seed, sampling_processors
from prefix_rft.models import tiny_random_model
from tests.test_engine import assert_logprobs_match_score

VOCAB = 256
STOP = 7
TOK = SimpleNamespace(pad_token_id=0)


@pytest.fixture(scope="module")
def model():
    return tiny_random_model(VOCAB, hidden_size=32, num_layers=2, num_heads=2, seed=1)


@pytest.fixture(scope="module")
def fast_engine(model):
    return HFEngine(model, TOK, [STOP], max_batch_size=8, fast=True,
                    compile_config=CompileConfig(backend="eager", mode=None))


def _requests() -> list[GenerationRequest]:
    prompts = [[11, 12, 13], [21, 22, 23, 24, 25, 26, 27], [31], [41, 42, 43, 44, 45]]
    return [GenerationRequest(p, 6 + k, prefix_ids=[99] * (k % 2), seed=1000 + k)
            for k, p in enumerate(prompts)]


def _tokens(outs) -> list[list[list[int]]]:
    return [[o.token_ids for o in samples] for samples in outs]


SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, seed=5)


def test_row_tokens_do_not_depend_on_the_batch(model):
    reqs = _requests()
    whole = _tokens(HFEngine(model, TOK, [STOP], max_batch_size=8).generate(reqs, 2, SAMPLED))
    assert len({tuple(t) for samples in whole for t in samples}) == 8  # rows differ
    one = HFEngine(model, TOK, [STOP], max_batch_size=1)
    assert _tokens(one.generate(reqs, 2, SAMPLED)) == whole
    alone = [_tokens(one.generate([r], 2, SAMPLED))[0] for r in reqs]
    assert alone == whole
    three = HFEngine(model, TOK, [STOP], max_batch_size=3)
    assert _tokens(three.generate(reqs[::-1], 2, SAMPLED)) == whole[::-1]
    # Other sampling seeds do not matter once a request has its own; without one, request i is
    # seeded from (SamplingParams.seed, i), as in the vLLM engine.
    assert _tokens(three.generate(reqs, 2, SamplingParams(0.9, 0.95, seed=6))) == whole
    unseeded = [GenerationRequest(r.prompt_ids, r.max_new_tokens, r.prefix_ids) for r in reqs]
    derived = [GenerationRequest(r.prompt_ids, r.max_new_tokens, r.prefix_ids,
                                 seed=_seed_for(SAMPLED.seed, i)) for i, r in enumerate(reqs)]
    assert _tokens(three.generate(unseeded, 2, SAMPLED)) == _tokens(three.generate(derived, 2,
                                                                                   SAMPLED))


def _expected(logits: list[float], temperature: float, top_p: float) -> list[float]:
    """softmax(logits / T), then the smallest most-probable set with mass >= top_p, renormalised."""
    weights = [math.exp(x / temperature) for x in logits]
    probs = [w / sum(weights) for w in weights]
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return [p / mass if i in kept else 0.0 for i, p in enumerate(probs)]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.8), (1.5, 0.9)])
def test_gumbel_max_samples_the_tempered_top_p_distribution(temperature, top_p):
    logits = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]
    want = torch.tensor(_expected(logits, temperature, top_p))
    draws = 20_000
    keys = row_keys([row_seed(s, 0) for s in range(draws)])
    scores = torch.tensor(logits).repeat(draws, 1)
    picks = []
    for position in (0, 1):
        procs = sampling_processors(temperature, top_p, keys, prompt_width=3)
        ids = torch.zeros((draws, 3 + position), dtype=torch.long)
        picks.append(procs(ids, scores.clone()).argmax(-1))
        freq = torch.bincount(picks[-1], minlength=len(logits)).double() / draws
        assert (freq - want).abs().max() < 0.02, (freq, want)
        assert freq[want == 0].sum() == 0  # top-p removed tokens are never drawn
    # consecutive positions draw independently: P(same token twice) = sum p^2
    same = (picks[0] == picks[1]).double().mean()
    assert abs(same - (want**2).sum()) < 0.02


def test_gumbel_noise_is_a_pure_function_of_seed_position_and_id():
    keys = row_keys([row_seed(3, 0), row_seed(3, 1), row_seed(4, 0)])
    a = gumbel_noise(keys, 5, 1000)
    assert torch.equal(a[1:2], gumbel_noise(keys[1:2], 5, 1000))  # another batch, same row
    assert torch.equal(a[:, :10], gumbel_noise(keys, 5, 10))  # the vocabulary size does not matter
    assert not torch.equal(a, gumbel_noise(keys, 6, 1000))
    assert abs(a.mean() - 0.5772) < 0.05 and abs(a.std() - math.pi / math.sqrt(6)) < 0.05


def test_fast_path_decodes_like_the_plain_path(model, fast_engine):
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    fast_engine.warmup(prompt_len=8, max_new_tokens=16)
    graphs = stats["unique_graphs"]
    assert graphs > before  # the decode step and the noise were compiled
    plain = HFEngine(model, TOK, [STOP], max_batch_size=8, fast=False)
    reqs = _requests()
    for sampling in (SamplingParams(temperature=0.0), SAMPLED):
        assert _tokens(fast_engine.generate(reqs, 2, sampling)) == _tokens(plain.generate(reqs, 2,
                                                                                          sampling))
    # 3 and 5 rows share the 8-row bucket, other prompt widths the 512-token cache
    fast_engine.generate(reqs[:3], 1, SAMPLED)
    fast_engine.generate(reqs[:1], 5, SAMPLED)
    assert stats["unique_graphs"] == graphs  # nothing was compiled after the warm-up


@pytest.mark.parametrize("fast", [False, True])
def test_logprobs_match_trainer_scoring(model, fast_engine, fast):
    eng = fast_engine if fast else HFEngine(model, TOK, [STOP], max_batch_size=8)
    reqs = _requests()
    sampling = SamplingParams(temperature=0.7, top_p=0.9, seed=2, return_logprobs=True)
    outs = eng.generate(reqs, 2, sampling)
    for req, samples in zip(reqs, outs):
        assert_logprobs_match_score(model, eng.pad_id, req, samples, temperature=0.7)
