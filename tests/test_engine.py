"""The Hugging Face generation engine (token ids in/out, per-row limits, stops, seeds, log-probs)
and the engine factory that training and evaluation build their engines through."""

from __future__ import annotations

import math

import pytest
import torch

from prefix_rft.errors import UserError
from prefix_rft.models import tiny_random_model
from prefix_rft.rollout.engines import (
    EngineSpec,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    engine_names,
    make_engine,
    register_engine,
    unregister_engine,
)
from prefix_rft.rollout.engines.hf import HFEngine
from prefix_rft.rollout.prompting import encode_prompt, stop_token_ids
from prefix_rft.train import logprobs as lp
from tests.test_trainer import _cfg, _trainer


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


# ------------------------------------------------------------------------------ the factory
DUMMY = "fixed-answer-test"
ANSWER = "The answer is \\boxed{1}."


class FixedAnswerEngine:
    """Answers every request with the same token ids (ANSWER, then the stop id), cut to the
    request's limit, and records what it was asked."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.stop_id = spec.stop_ids()[0]
        self.answer = spec.tokenizer.encode(ANSWER, add_special_tokens=False) + [self.stop_id]
        self.calls: list[tuple[list[GenerationRequest], int, SamplingParams]] = []

    def generate(self, requests, n, sampling):
        self.calls.append((list(requests), n, sampling))
        outs = []
        for r in requests:
            ids = self.answer[: r.max_new_tokens]
            reason = "stop" if ids and ids[-1] == self.stop_id else "length"
            outs.append([GenerationOutput(list(ids), reason) for _ in range(n)])
        return outs

    def close(self) -> None:
        pass


@pytest.fixture
def fixed_answer_engine():
    """Registers FixedAnswerEngine as DUMMY for one test; yields the engines it builds."""
    built: list[FixedAnswerEngine] = []

    @register_engine(DUMMY)
    def _build(spec: EngineSpec) -> FixedAnswerEngine:
        built.append(FixedAnswerEngine(spec))
        return built[-1]

    yield built
    unregister_engine(DUMMY)


def test_registered_engine_trains_one_step(fixed_answer_engine, smol_tokenizer):
    cfg = _cfg(rollout={"engine": DUMMY})
    tr = _trainer(cfg, smol_tokenizer)
    (engine,) = fixed_answer_engine
    assert tr.engine is engine and engine.spec.model is tr.model
    assert engine.spec.tokenizer is smol_tokenizer and engine.calls == []
    metrics = tr.rl_step()
    (requests, n, sampling), = engine.calls
    r = cfg.rollout
    assert n == 1 and (sampling.temperature, sampling.top_p) == (r.temperature, r.top_p)
    assert r.n_full_demo == 0 and r.n_prefixed >= 1  # prefix_rft: every member is generated
    assert len(requests) == r.num_prompts * r.group_size
    prompts = {}
    for req in requests:
        prompts.setdefault(tuple(req.prompt_ids), []).append(req)
    assert len(prompts) == r.num_prompts
    for prompt, reqs in prompts.items():
        (i,) = [i for i in range(len(tr.train_set)) if tr.ids.prompt(i) == list(prompt)]
        demos = [tr.ids.demo(i, d) for d in range(len(tr.train_set[i].demonstrations))]
        n_policy = r.group_size - r.n_prefixed
        assert [len(q.prefix_ids) > 0 for q in reqs] == [False] * n_policy + [True] * r.n_prefixed
        for q in reqs:
            assert q.max_new_tokens == r.max_response_len - len(q.prefix_ids)
            assert any(list(q.prefix_ids) == d[: len(q.prefix_ids)] for d in demos)
    assert metrics["step"] == 1
    assert metrics["completions/mean_length"] > 0
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    assert numbers and all(math.isfinite(v) for v in numbers.values()), numbers


def test_rollout_engine_is_validated_against_the_registry(fixed_answer_engine):
    assert _cfg(rollout={"engine": DUMMY}).rollout.engine == DUMMY
    assert _cfg().rollout.engine == "auto"
    assert _cfg(rollout={"engine": "vllm"}, model={"random_init": None}).rollout.engine == "vllm"
    with pytest.raises(UserError, match="key 'rollout.engine': vllm starts from a model directory"):
        _cfg(rollout={"engine": "vllm"})  # the tiny test config builds a random model
    register_engine("eval-only-test", trains=False)(FixedAnswerEngine)
    try:
        with pytest.raises(UserError, match="key 'rollout.engine': 'eval-only-test' rollouts in "
                                            "training are not supported yet"):
            _cfg(rollout={"engine": "eval-only-test"})
    finally:
        unregister_engine("eval-only-test")
    with pytest.raises(UserError, match="key 'rollout.engine': 'tpu' is not an engine that can "
                                        f"train; expected auto, hf, vllm or {DUMMY}"):
        _cfg(rollout={"engine": "tpu"})


def test_unregistered_engine_is_rejected():
    assert DUMMY not in engine_names()
    with pytest.raises(UserError, match=f"key 'rollout.engine': '{DUMMY}' is not an engine"):
        _cfg(rollout={"engine": DUMMY})
    assert engine_names() == ["auto", "hf", "vllm"]
    assert engine_names(training=True) == ["auto", "hf", "vllm"]


def test_registering_a_name_twice_fails(fixed_answer_engine):
    with pytest.raises(ValueError, match="already registered"):
        register_engine(DUMMY)(FixedAnswerEngine)


def test_auto_is_hf_for_an_in_memory_policy(smol_tokenizer):
    model = tiny_random_model(len(smol_tokenizer), hidden_size=32, num_layers=2, num_heads=2)
    engine, name = make_engine("auto", EngineSpec(smol_tokenizer, model=model, max_batch_size=3,
                                                  decoding="generate"))
    assert name == "hf" and isinstance(engine, HFEngine)
    assert engine.model is model and engine.max_batch_size == 3 and engine.fast is False
    assert engine.stop_ids == stop_token_ids(smol_tokenizer)


def test_unknown_engine_names_the_key():
    with pytest.raises(UserError, match="pipeline.eval_engine 'tpu': expected auto, hf or vllm"):
        make_engine("tpu", EngineSpec(None), key="pipeline.eval_engine")


@pytest.mark.parametrize("eager", [False, True])
def test_eval_task_builds_its_engine_from_the_pipeline_keys(fixed_answer_engine, smollm2_dir,
                                                             tmp_path, eager):
    """An eval cell builds its engine through the factory from the model directory, with
    `pipeline.eval_vllm_eager` as the spec's enforce_eager, and scores what the engine returns:
    the fixed answer 1 is right on 2 of the file's 4 problems (golds 1, 2, 1, 3): 0.5."""
    from prefix_rft.data.problem import Problem, save_problems
    from prefix_rft.io.tracking import Tracker
    from steps.evaluate import eval_task
    from steps.flow_config import resolve_flow

    bench = tmp_path / "ones.jsonl"
    save_problems([Problem(f"p{i}", f"What is {g} times 1?", g, (), "test")
                   for i, g in enumerate(["1", "2", "1", "3"])], bench)
    cfg = resolve_flow({
        "method": "rft", "model": {"name_or_path": str(smollm2_dir)},
        "data": {"train": "synthetic:tiny"}, "reward": {"num_workers": 0},
        "pipeline": {"benchmarks": [str(bench)], "eval_n": 1, "eval_max_new_tokens": 16,
                     "eval_engine": DUMMY, "eval_vllm_eager": eager},
    })
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    parent = tracker.create_run("t", "parent", {})
    item = {"epoch": 0, "checkpoint": None, "benchmark": "ones", "spec": str(bench)}
    out = eval_task(cfg, item, data_ref={}, tracker=tracker,
                    tracking={"run_id": parent, "experiment": "t", "uri": tracker.uri}, n_boot=20)
    (engine,) = fixed_answer_engine
    assert engine.spec.enforce_eager is eager
    assert engine.spec.model is None and engine.spec.model_dir == str(smollm2_dir)
    assert out["num_problems"] == 4 and out["engine"] == DUMMY
    assert out["value"] == pytest.approx(0.5)


def test_vllm_gets_a_directory_for_a_builtin_alias(smollm2_dir, smol_tokenizer, tmp_path,
                                                    monkeypatch):
    """vLLM knows nothing of our aliases: offline it looks a name up in the hub cache and fails.
    `prefix-rft eval --model qwen2.5-coder-1.5b-instruct --engine vllm` failed so on the GPU
    machine (2026-12-07) while the hf engine took the same alias. The vllm engine is given the
    alias's converted directory instead (the cache named by $PREFIX_RFT_CACHE); a directory
    stays itself and a hub id is passed on."""
    from prefix_rft.models import resolve_model_path
    from prefix_rft.rollout.engines import vllm as vllm_engine

    # what the vllm builder resolves its model_dir with
    monkeypatch.setenv("PREFIX_RFT_CACHE", str(smollm2_dir.parent))
    assert resolve_model_path("smollm2-135m-instruct") == str(smollm2_dir)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"

    # and the factory hands the engine that directory (vLLM cannot start on this CPU, so the
    # engine class is replaced by one that records its first argument)
    seen = []

    class Recorder:
        def __init__(self, model_dir, *args, **kwargs):
            seen.append(model_dir)

    monkeypatch.setattr(vllm_engine, "VLLMEngine", Recorder)
    make_engine("vllm", EngineSpec(smol_tokenizer, model_dir="smollm2-135m-instruct"))
    assert seen == [str(smollm2_dir)]
