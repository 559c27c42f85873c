"""Packed (padding-free) log-prob passes equal the padded ones: log-probs, entropies and the
gradients of a weighted sum, on tiny float32 random models (CPU, seconds)."""

from __future__ import annotations

import random

import pytest
import torch

from prefix_rft.models import tiny_random_model
from prefix_rft.train import logprobs as lp

VOCAB = 97
TOL = 1e-5


def _data(seed: int = 0, n: int = 6):
    rng = random.Random(seed)
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 9))] for _ in range(n)]
    responses = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 13))] for _ in range(n)]
    return prompts, responses


def _model(architecture="qwen2", seed=1, attn="sdpa"):
    m = tiny_random_model(VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                          architecture=architecture, seed=seed)
    m.set_attn_implementation(attn)
    return m


def enable_checkpointing(m) -> None:
    kw = {"use_reentrant": False}
    if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.2x
        m.activation_checkpointing_enable(kw)
    else:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    m.train()


def _padded(model, prompts, responses, temperature, with_entropy=True):
    return lp.score(model, prompts, responses, pad_id=0, temperature=temperature,
                    micro_batch_size=4, with_entropy=with_entropy, chunk=7)


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=TOL, rtol=0)


@pytest.mark.parametrize("architecture,impl,attention,head", [
    ("llama", "sdpa", "varlen", "fused"), ("qwen2", "sdpa", "varlen", "fused"),
    ("qwen2", "eager", "varlen", "model"), ("llama", "sdpa", "mask", "fused"),
    ("qwen2", "sdpa", "mask", "model"), ("qwen2", "eager", "mask", "fused"),
])
def test_packed_score_matches_padded(architecture, impl, attention, head):
    """`mask` = transformers' block-diagonal mask from the restarting position ids (sdpa/eager);
    `varlen` = our per-sequence attention (installed on the model)."""
    model = _model(architecture, attn=impl)
    prompts, responses = _data()
    ref_lp, ref_ent = _padded(model, prompts, responses, temperature=0.7)
    got_lp, got_ent = lp.packed_score(model, prompts, responses, temperature=0.7, max_tokens=None,
                                      with_entropy=True, chunk=5, attention=attention, head=head)
    _close(got_lp, ref_lp)
    _close(got_ent, ref_ent)
    # after varlen was installed, padded (unpacked) calls still run the original implementation
    again_lp, again_ent = _padded(model, prompts, responses, temperature=0.7)
    _close(again_lp, ref_lp)
    _close(again_ent, ref_ent)
    if attention == "varlen":
        assert model.config._attn_implementation == f"{lp.VARLEN_ATTENTION}_{impl}"


@pytest.mark.parametrize("max_tokens", [1, 20, 35])
def test_token_budget_and_order(max_tokens):
    model = _model("llama")
    prompts, responses = _data(seed=3, n=7)
    responses[2] = []  # nothing to score: an empty tensor, as `score` returns
    ref_lp, _ = _padded(model, prompts, responses, temperature=1.0, with_entropy=False)
    got_lp, got_ent = lp.packed_score(model, prompts, responses, temperature=1.0,
                                      max_tokens=max_tokens, with_entropy=False)
    assert got_ent is None
    _close(got_lp, ref_lp)
    for sort in (False, True):
        batches = lp.pack_sequences(prompts, responses, max_tokens=max_tokens, sort=sort)
        rows = sorted(i for b in batches for i in b.rows)
        assert rows == [i for i, r in enumerate(responses) if r]
        for b in batches:
            assert b.num_tokens <= max_tokens or len(b.rows) == 1
            assert b.position_ids[0].tolist() == [p for n in b.seq_lens for p in range(n)]
            assert sum(b.response_lens) == b.targets.numel() == b.logit_index.numel()


def test_pack_layout():
    (b,) = lp.pack_sequences([[1, 2], [3]], [[4, 5, 6], [7]])
    assert b.input_ids.tolist() == [[1, 2, 4, 5, 3]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0]]
    assert b.cu_seqlens.tolist() == [0, 4, 5] and b.max_seqlen == 4
    assert b.logit_index.tolist() == [1, 2, 3, 4]  # 2 -> 4, 4 -> 5, 5 -> 6, 3 -> 7
    assert b.targets.tolist() == [4, 5, 6, 7]
    assert [x.tolist() for x in b.split(torch.arange(4))] == [[0, 1, 2], [3]]
    assert b.gather([torch.tensor([9, 8, 7]), torch.tensor([6])]).tolist() == [9, 8, 7, 6]
    with pytest.raises(ValueError, match="empty prompt"):
        lp.pack_sequences([[]], [[1]])


@pytest.mark.parametrize("attention,head,checkpointing", [
    ("varlen", "fused", False), ("mask", "model", False), ("mask", "fused", False),
    ("varlen", "fused", True),
])
def test_gradients_match_padded(attention, head, checkpointing):
    """d/dtheta of sum_t w_t logp_t: the packed pass (one row, or token-budget rows with
    accumulated backward) equals the padded `response_logits` pass, parameter by parameter;
    also with activation checkpointing (layers re-run during backward)."""
    prompts, responses = _data(seed=5, n=5)
    rng = random.Random(7)
    weights = [torch.tensor([rng.uniform(-1, 1) for _ in r]) for r in responses]
    temperature = 0.9

    def padded_grads(m):
        m.zero_grad(set_to_none=True)
        mb = lp.collate(prompts, responses, pad_id=0)
        logp = lp.logprobs_from_logits(lp.response_logits(m, mb), mb.response_ids, temperature)
        w = torch.zeros_like(logp)
        for i, x in enumerate(weights):
            w[i, : len(x)] = x
        (logp * w * mb.response_mask).sum().backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    def packed_grads(m, max_tokens):
        m.zero_grad(set_to_none=True)
        for b in lp.pack_sequences(prompts, responses, max_tokens=max_tokens):
            logp, ent = lp.packed_logprobs(m, b, temperature=temperature, with_entropy=True,
                                           chunk=3, attention=attention, head=head)
            assert not ent.requires_grad
            (logp * b.gather(weights)).sum().backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    m = _model("qwen2", seed=2)
    ref = padded_grads(m)
    if checkpointing:
        enable_checkpointing(m)
    for max_tokens in (None, 16):
        got = packed_grads(m, max_tokens)
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=TOL, rtol=0, msg=k)


def test_fused_head_gradcheck_with_bias():
    """The hand-written backward of the chunked head, against autograd, with an lm_head bias."""
    torch.manual_seed(0)
    h = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (9,))
    assert torch.autograd.gradcheck(
        lambda h, w, b: lp._ChunkedLogprobHead.apply(h, w, b, t, 0.8, 4, False)[0], (h, w, b)
    )


def test_generation_unchanged_by_varlen_install():
    """Installing varlen attention leaves generation (KV cache, left padding) as it was."""
    m = _model("llama", seed=3).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    before = m.generate(input_ids=ids, attention_mask=mask, **kw)
    lp.install_varlen_attention(m)
    assert lp.install_varlen_attention(m) == f"{lp.VARLEN_ATTENTION}_sdpa"  # idempotent
    assert torch.equal(m.generate(input_ids=ids, attention_mask=mask, **kw), before)
