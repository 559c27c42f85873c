"""HF engine sampling: per-row seeds make a row's tokens independent of its batch; the Gumbel-max
sampler draws from softmax(logits / T) with top-p; the fast path (graph_decode: static cache, the
whole step in one CUDA graph on GPU) decodes like the plain one; returned log-probs are the
trainer's.

A 256-token tiny random model (no tokenizer: the engine only needs a pad id) keeps this fast. On
the CPU the fast path's step runs eagerly (CUDA graphs need CUDA), and once through torch.compile
with fullgraph=True and the "eager" backend: dynamo must trace the whole step as one graph with
no graph break and no host sync (what capture needs); inductor's code generation and the capture
itself run on the GPU (perf/generation_speed.py checks them there against the plain path).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from prefix_rft.models import tiny_random_model
from prefix_rft.rollout.engines import GenerationRequest, SamplingParams, graph_decode
from prefix_rft.rollout.engines.hf import (
    HFEngine,
    _seed_for,
    gumbel_noise,
    row_keys,
    row_seed,
    sampling_processors,
)
from tests.test_engine import assert_logprobs_match_score

VOCAB = 256
STOP = 7
TOK = SimpleNamespace(pad_token_id=0)


@pytest.fixture(scope="module")
def model():
    return tiny_random_model(VOCAB, hidden_size=32, num_layers=2, num_heads=2, seed=1)


@pytest.fixture(scope="module")
def fast_engine(model):
    return HFEngine(model, TOK, [STOP], max_batch_size=8, fast=True, compile="eager")


def _requests() -> list[GenerationRequest]:
    prompts = [[11, 12, 13], [21, 22, 23, 24, 25, 26, 27], [31], [41, 42, 43, 44, 45]]
    return [GenerationRequest(p, 6 + k, prefix_ids=[99] * (k % 2), seed=1000 + k)
            for k, p in enumerate(prompts)]


def _tokens(outs) -> list[list[list[int]]]:
    return [[o.token_ids for o in samples] for samples in outs]


SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, seed=5)


@pytest.mark.parametrize("fast", [False, True])
def test_row_tokens_do_not_depend_on_the_batch(model, fast):
    reqs = _requests()
    whole = _tokens(HFEngine(model, TOK, [STOP], max_batch_size=8, fast=fast).generate(reqs, 2,
                                                                                      SAMPLED))
    assert len({tuple(t) for samples in whole for t in samples}) == 8  # rows differ
    one = HFEngine(model, TOK, [STOP], max_batch_size=1, fast=fast)
    assert _tokens(one.generate(reqs, 2, SAMPLED)) == whole
    alone = [_tokens(one.generate([r], 2, SAMPLED))[0] for r in reqs]
    assert alone == whole
    three = HFEngine(model, TOK, [STOP], max_batch_size=3, fast=fast)
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


def test_gumbel_noise_cpu_path_has_the_bits_of_the_device_path(monkeypatch):
    """On CPU the hash runs in numpy uint32; under torch.compile and on GPUs in int64 torch ops.
    Both give the same noise, bit for bit, at the extreme seeds and a real vocabulary size."""
    keys = row_keys([row_seed(3, 0), row_seed(2**63 - 1, 7), 0, 2**64 - 1])
    cases = [(p, v) for p in (0, 9, torch.tensor(4), 2**20) for v in (1, 1000, 151_936)]
    cpu = [gumbel_noise(keys, p, v) for p, v in cases]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the torch path
    for (p, v), a in zip(cases, cpu):
        assert torch.equal(a, gumbel_noise(keys, p, v)), (p, v)


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
    fast_engine.warmup(prompt_len=8, max_new_tokens=16, sampling=SamplingParams(temperature=0.0))
    fast_engine.warmup(prompt_len=8, max_new_tokens=16, sampling=SAMPLED)
    graphs = stats["unique_graphs"]
    assert graphs == before + 2  # one whole-step graph per sampling setting: no graph break
    plain = HFEngine(model, TOK, [STOP], max_batch_size=8, fast=False)
    reqs = _requests()
    for sampling in (SamplingParams(temperature=0.0), SAMPLED):
        assert _tokens(fast_engine.generate(reqs, 2, sampling)) == _tokens(plain.generate(reqs, 2,
                                                                                          sampling))
    # 3 and 5 rows share the 8-row bucket, other prompt widths the 256-token cache
    fast_engine.generate(reqs[:3], 1, SAMPLED)
    fast_engine.generate(reqs[:1], 5, SAMPLED)
    assert stats["unique_graphs"] == graphs  # nothing was compiled after the warm-up
    assert len(fast_engine._decoders) == 2


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
def test_fast_path_stops_rows_like_the_plain_path(architecture):
    """Rows that stop at different steps, per-row limits, a long prefix row and an all-stopped
    chunk that ends early: tokens, finish reasons and log-probs as on the plain path."""
    m = tiny_random_model(VOCAB, hidden_size=32, num_layers=2, num_heads=4, seed=3,
                          architecture=architecture)
    reqs = _requests() + [GenerationRequest([5, 6], 4, prefix_ids=list(range(50, 70)), seed=9)]
    sampling = SamplingParams(temperature=1.0, seed=1, return_logprobs=True)
    # a stop id that the plain path samples mid-row in some rows
    free = HFEngine(m, TOK, [VOCAB], fast=False).generate(reqs, 2, sampling)
    stop = free[1][0].token_ids[2]
    plain, fast = (HFEngine(m, TOK, [stop], max_batch_size=8, fast=f) for f in (False, True))
    want, got = plain.generate(reqs, 2, sampling), fast.generate(reqs, 2, sampling)
    assert _tokens(got) == _tokens(want)
    reasons = [o.finish_reason for samples in want for o in samples]
    assert reasons == [o.finish_reason for samples in got for o in samples]
    assert "stop" in reasons and "length" in reasons
    assert any(len(o.token_ids) < r.max_new_tokens for r, s in zip(reqs, want) for o in s
               if o.finish_reason == "stop")
    for a, b in zip(want, got):
        for x, y in zip(a, b):
            assert torch.allclose(torch.tensor(y.logprobs), torch.tensor(x.logprobs), atol=1e-5)
    # every row stops at its first token: the chunk ends after the first host check
    first = got[0][0].token_ids[0]
    early = HFEngine(m, TOK, [first], max_batch_size=8, fast=True)
    one = [GenerationRequest(reqs[0].prompt_ids, 200, seed=reqs[0].seed)]
    (out,) = early.generate(one, 1, sampling)[0]
    assert out.token_ids == [first] and out.finish_reason == "stop"
    (dec,) = early._decoders.values()
    assert dec.steps_run == graph_decode.CHECK_EVERY


@pytest.mark.parametrize("fast", [False, True])
def test_logprobs_match_trainer_scoring(model, fast_engine, fast):
    eng = fast_engine if fast else HFEngine(model, TOK, [STOP], max_batch_size=8)
    reqs = _requests()
    sampling = SamplingParams(temperature=0.7, top_p=0.9, seed=2, return_logprobs=True)
    outs = eng.generate(reqs, 2, sampling)
    for req, samples in zip(reqs, outs):
        assert_logprobs_match_score(model, eng.pad_id, req, samples, temperature=0.7)


def test_fast_path_runs_through_the_trainers_varlen_dispatcher():
    """The trainer's packed passes swap the model's attention for a dispatcher
    (`install_varlen_attention`); decoding must still trace as one graph and match."""
    from prefix_rft.train.logprobs import install_varlen_attention

    m = tiny_random_model(VOCAB, hidden_size=32, num_layers=2, num_heads=2, seed=4)
    install_varlen_attention(m)
    assert graph_decode.supports(m)
    reqs = _requests()
    fast = HFEngine(m, TOK, [STOP], max_batch_size=8, fast=True, compile="eager")
    plain = HFEngine(m, TOK, [STOP], max_batch_size=8, fast=False)
    assert _tokens(fast.generate(reqs, 2, SAMPLED)) == _tokens(plain.generate(reqs, 2, SAMPLED))


def test_decoding_modes_choose_the_engine_path(model):
    from prefix_rft.core.config import resolve
    from prefix_rft.errors import UserError
    from prefix_rft.rollout.engines.hf import decoding_options

    paths = {}
    for mode in ("auto", "generate", "graph", "compiled"):
        eng = HFEngine(model, TOK, [STOP], **decoding_options(mode))
        paths[mode] = (eng.fast, eng.compile)
    # on the CPU auto = generate; graph = the static loop uncompiled; compiled adds inductor
    assert paths == {"auto": (False, None), "generate": (False, None), "graph": (True, None),
                     "compiled": (True, "inductor")}
    base = {"method": "rft", "model": {"name_or_path": "m"}, "data": {"train": "x"}}
    assert resolve(base, ["model.decoding=graph"]).model.decoding == "graph"
    with pytest.raises(UserError, match="model.decoding"):
        resolve(base, ["model.decoding=fastest"])


@pytest.mark.parametrize("architecture,heads", [("llama", 4), ("qwen2", 4), ("qwen3", 4),
                                                ("llama", 3)])
def test_fused_decode_forward_is_the_models_forward(architecture, heads):
    """One decode step through `FusedDecodeForward` (q/k/v and gate/up as one GEMM, GQA packed
    into the query axis) = the model's own forward with the same static cache: logits and the
    keys/values written, for grouped (4 heads, 2 kv heads) and plain (3 heads) attention."""
    m = tiny_random_model(VOCAB, hidden_size=48, num_layers=2, num_heads=heads, seed=5,
                          architecture=architecture).eval()
    b, length, width = 3, 16, 5
    ids = torch.randint(1, VOCAB, (b, width), generator=torch.Generator().manual_seed(0))
    valid = torch.zeros(b, length, dtype=torch.bool)
    valid[:, :width + 1] = True
    valid[0, :2] = False  # row 0 is left-padded by two columns
    token = torch.tensor([3, 4, 5])
    position = valid.long().sum(-1, keepdim=True) - 1
    prompt = valid.clone()
    prompt[:, width:] = False
    cols, rows = torch.arange(length), torch.arange(width)
    attn = ((cols[None, :] <= rows[:, None])[None] & prompt[:, None, :]) | (
        cols[None, :] == rows[:, None])[None]  # the decoder's prefill mask
    caches = []
    for _ in range(2):
        c = graph_decode.StaticKVCache(m, b, length)
        c.columns = torch.arange(width)
        with torch.no_grad():
            m(input_ids=ids, position_ids=(prompt[:, :width].long().cumsum(-1) - 1).clamp(min=0),
              attention_mask=attn[:, None], use_cache=True,
              **{graph_decode._cache_kwarg(type(m)): c})
        c.columns = torch.tensor([width])
        caches.append(c)
    kw = {graph_decode._cache_kwarg(type(m)): caches[0]}
    with torch.no_grad():
        want = m(input_ids=token[:, None], position_ids=position,
                 attention_mask=valid[:, None, None, :], use_cache=True, **kw).logits[:, -1]
        got = graph_decode.FusedDecodeForward(m)(token, position, valid, caches[1])
    assert got.shape == (b, VOCAB)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for k0, k1 in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        torch.testing.assert_close(k1, k0, atol=1e-6, rtol=1e-6)


def test_fused_weights_follow_an_updated_policy():
    """The trainer updates the weights in place between rollouts: the fast decoder (kept, its
    graph reads the same addresses) must decode with the new weights, as the plain path does."""
    m = tiny_random_model(VOCAB, hidden_size=32, num_layers=2, num_heads=4, seed=6)
    fast = HFEngine(m, TOK, [STOP], max_batch_size=8, fast=True)
    plain = HFEngine(m, TOK, [STOP], max_batch_size=8, fast=False)
    reqs = _requests()
    before = _tokens(fast.generate(reqs, 2, SAMPLED))
    (dec,) = fast._decoders.values()
    assert dec.fused is not None
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)
    after = _tokens(fast.generate(reqs, 2, SAMPLED))
    assert fast._decoders[next(iter(fast._decoders))] is dec  # the same decoder, refreshed
    assert after == _tokens(plain.generate(reqs, 2, SAMPLED))
    assert after != before


def test_fast_path_decodes_under_the_callers_autocast(model):
    """Under torch.autocast (the trainer's `model.autocast` rollouts) the fast path runs its
    step in bfloat16, with a decoder of its own: its log-probs are the plain path's under the
    same autocast, not the float32 ones; outside it, a float32 decoder decodes as before."""
    fast = HFEngine(model, TOK, [STOP], max_batch_size=8, fast=True, compile="eager")
    plain = HFEngine(model, TOK, [STOP], max_batch_size=8, fast=False)
    reqs, sampling = _requests(), dataclasses.replace(SAMPLED, return_logprobs=True)

    def logps(outs):
        return torch.tensor([x for samples in outs for o in samples for x in o.logprobs])

    ref = plain.generate(reqs, 2, sampling)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, amp_plain = fast.generate(reqs, 2, sampling), plain.generate(reqs, 2, sampling)
    assert [k[-1] for k in fast._decoders] == [torch.bfloat16]
    assert _tokens(amp) == _tokens(amp_plain) == _tokens(ref)  # near-uniform tiny-model logits
    assert float((logps(amp) - logps(ref)).abs().max()) > 1e-4  # the step ran in bfloat16
    assert torch.allclose(logps(amp), logps(amp_plain), atol=2e-2)
    again = fast.generate(reqs, 2, sampling)  # float32 again: a decoder of its own
    assert _tokens(again) == _tokens(ref)
    assert torch.allclose(logps(again), logps(ref), atol=1e-5)
    assert sorted(str(k[-1]) for k in fast._decoders) == ["False", "torch.bfloat16"]
