"""Memory and precision options of the training passes (tiny random model, float32, CPU):

* `model.activation_checkpointing`: every decoder layer recomputes its activations in backward;
  the SFT step's update equals the one without (measured 0; tolerance 1e-6 relative).
* `model.autocast: bfloat16`: the passes' forward runs in bfloat16 while weights, gradients and
  AdamW state stay float32 (master weights). The step is not the float32 one (bf16 rounding
  changes the loss in its 3rd-4th digit) but moves every parameter the same way (cosine of the
  two updates > 0.99), padded and packed (the chunked log-prob head recomputes its logits in
  backward under the forward's autocast, else its bf16 hidden states meet float32 weights).
  The rollouts are generated under the same autocast (the policy's forward sees it); the
  held-out evaluation is not.
* autocast needs float32 weights: bf16 weights with it fail at start-up, naming the key.
"""

from __future__ import annotations

import pytest
import torch

from prefix_rft.errors import UserError
from tests.test_trainer import _cfg, _trainer
from tests.test_trainer_packed import SFT, _params

RL = {"rollout": {"n_prefixed": 1, "max_response_len": 16},
      "rl": {"steps": 1, "num_minibatches": 1, "micro_batch_size": 8, "optim": {"lr": 1e-3}}}


def _delta(start, end):
    return torch.cat([(end[k] - start[k]).flatten() for k in start])


def test_activation_checkpointing_gives_the_same_update(smol_tokenizer):
    on = _trainer(_cfg("sft", model={"activation_checkpointing": True}, **SFT), smol_tokenizer)
    off = _trainer(_cfg("sft", **SFT), smol_tokenizer)
    layers = on.model.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert not any(layer.gradient_checkpointing for layer in off.model.model.layers)
    start = _params(off.model)
    m_on, m_off = on.sft_step(), off.sft_step()
    assert m_off["loss"] > 0 and m_on["loss"] == pytest.approx(m_off["loss"], rel=1e-6)
    for k, b in _params(off.model).items():
        a = _params(on.model)[k]
        assert float((a - b).norm()) <= 1e-6 * float(b.norm()), k
    assert float(_delta(start, _params(off.model)).norm()) > 0


@pytest.mark.parametrize("method,over", [("sft", SFT), ("prefix_rft", RL)])
@pytest.mark.parametrize("packing", ["off", "on"])
def test_bf16_autocast_keeps_float32_master_weights(smol_tokenizer, method, over, packing):
    amp = _trainer(_cfg(method, model={"autocast": "bfloat16", "packing": packing}, **over),
                   smol_tokenizer)
    ref = _trainer(_cfg(method, model={"packing": packing}, **over), smol_tokenizer)
    assert amp.autocast is torch.bfloat16 and ref.autocast is None
    start = _params(ref.model)
    step = (lambda t: t.sft_step()) if method == "sft" else (lambda t: t.rl_step())
    m_amp, m_ref = step(amp), step(ref)
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())
    state = [s for s in amp.opt.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)
    if method == "sft":  # an RL step's loss is ~0 at a random policy; the update still moves
        assert m_amp["loss"] != m_ref["loss"]  # the passes really ran in bf16
        assert m_amp["loss"] == pytest.approx(m_ref["loss"], rel=2e-2)
    d_amp, d_ref = _delta(start, _params(amp.model)), _delta(start, _params(ref.model))
    assert float(d_ref.norm()) > 0
    assert float(torch.nn.functional.cosine_similarity(d_amp, d_ref, dim=0)) > 0.99


def _autocast_seen(trainer, run) -> list:
    """Whether torch.autocast was on at each policy forward of `run()` (a forward hook)."""
    seen: list = []
    hook = trainer.model.register_forward_hook(
        lambda *_: seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
    try:
        run()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("autocast", ["bfloat16", "off"])
def test_rollouts_follow_model_autocast_and_evaluation_does_not(smol_tokenizer, autocast):
    tr = _trainer(_cfg("prefix_rft", model={"autocast": autocast}, eval={"num_problems": 2}, **RL),
                  smol_tokenizer)
    want = torch.bfloat16 if autocast == "bfloat16" else False
    rollouts = _autocast_seen(tr, lambda: tr.plan_and_generate([0, 1]))
    assert rollouts and set(rollouts) == {want}  # the prefill and every decode step
    evaluation = _autocast_seen(tr, lambda: tr.evaluate(tr.train_set[:2]))
    assert evaluation and set(evaluation) == {False}


@pytest.mark.parametrize("setting,dtype,device,native,want", [
    ("auto", "float32", "cpu", True, torch.bfloat16),  # AVX-512 BF16 / AMX: ~2.3x float32
    ("auto", "float32", "cpu", False, None),  # emulated bf16 would be slower than float32
    ("auto", "float32", "cuda", True, torch.bfloat16),
    ("auto", "bfloat16", "cuda", True, None),  # bf16 weights: nothing to autocast
    ("bfloat16", "float32", "cpu", False, torch.bfloat16),  # asked for explicitly
    ("off", "float32", "cpu", True, None),
])
def test_autocast_auto_follows_native_bf16(monkeypatch, setting, dtype, device, native, want):
    from prefix_rft.core.config import ModelConfig
    from prefix_rft.train import precision

    monkeypatch.setattr(precision, "native_bf16", lambda d: native)
    cfg = ModelConfig(name_or_path="m", autocast=setting, dtype=dtype)
    assert precision.autocast_dtype(cfg, torch.device(device)) is want


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    from prefix_rft.train.precision import native_bf16

    for avx512_bf16, amx, want in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert native_bf16(torch.device("cpu")) is want


def test_autocast_needs_float32_weights():
    with pytest.raises(UserError, match="model.autocast.*float32"):
        _cfg("sft", model={"autocast": "bfloat16", "dtype": "bfloat16"})


def test_chunked_head_backward_recomputes_under_the_forwards_autocast():
    """bf16 hidden states (what a decoder whose final norm returns its input dtype hands over
    under autocast) with float32 head weights: the chunked head's backward recomputes its logits
    under the forward's autocast, so gradients equal autograd through the same bf16 logits."""
    from prefix_rft.train.logprobs import _ChunkedLogprobHead

    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(10, 16, generator=g).bfloat16()
    w0 = torch.randn(40, 16, generator=g)
    targets = torch.randint(0, 40, (10,), generator=g)
    grads = []
    for fused in (True, False):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                logp, _ = _ChunkedLogprobHead.apply(h, w, None, targets, 0.7, 4, False)
            else:
                x = torch.nn.functional.linear(h, w).float() / 0.7
                logp = x.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(x, dim=-1)
        (logp * torch.linspace(0.5, 1.5, 10)).sum().backward()
        grads.append((logp.detach(), h.grad, w.grad))
    (lf, hf, wf), (lr, hr, wr) = grads
    assert hf.dtype == torch.bfloat16 and wf.dtype == torch.float32
    torch.testing.assert_close(lf, lr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf.float(), hr.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(wf, wr, atol=2e-2, rtol=2e-2)


def test_inductor_imports_after_metaflows_vendored_typing_extensions():
    """torch first, then Metaflow's vendored typing_extensions (what a flow task or this test
    session does): `ensure_inductor_importable` keeps inductor importable (fresh interpreters)."""
    import subprocess
    import sys

    head = "import torch, metaflow._vendor.typing_extensions\n"
    fixed = subprocess.run(
        [sys.executable, "-c", head + "from prefix_rft.torch_compat import "
         "ensure_inductor_importable\nensure_inductor_importable()\nimport torch._inductor.compile_fx"
         "\nprint('inductor ok')"], capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0 and "inductor ok" in fixed.stdout, fixed.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", head + "import torch._inductor.compile_fx"],
                           capture_output=True, text=True, timeout=300)
    if plain.returncode == 0:
        pytest.skip("this Python / Metaflow pair no longer breaks inductor's import")
    assert "without a default follows type parameter with a default" in plain.stderr
