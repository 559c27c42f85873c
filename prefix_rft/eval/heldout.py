"""Held-out accuracy of the policy on problems: avg@n with Math-Verify grading.

The small evaluation the trainer runs before and after training (the `make demo` report).
The benchmark protocol (avg@32 on the six math sets, pass@k, CIs) is
`prefix_rft.eval.protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefix_rft.rollout.engines.base import GenerationRequest, SamplingParams


def evaluate_problems(engine, tokenizer, problems: Sequence, grader, eval_cfg, *,
                      think_tags: bool = False, seed: int = 0) -> dict:
    """avg@n accuracy over `problems`; returns metrics and per-sample records."""
    from prefix_rft.eval.protocol import grading_failures
    from prefix_rft.rollout.prompting import encode_prompt

    if not problems:
        return {"eval/accuracy": float("nan"), "eval/num_problems": 0, "samples": []}
    reqs = [GenerationRequest(encode_prompt(tokenizer, p.prompt, think_tags=think_tags),
                              eval_cfg.max_new_tokens) for p in problems]
    sampling = SamplingParams(eval_cfg.temperature, eval_cfg.top_p, seed=seed)
    outs = engine.generate(reqs, eval_cfg.n_samples, sampling)
    texts, golds, owners = [], [], []
    for p, samples in zip(problems, outs):
        for k, o in enumerate(samples):
            texts.append(tokenizer.decode(o.token_ids, skip_special_tokens=True))
            golds.append(p.answer)
            owners.append((p.id, k))
    results = grader.grade(texts, golds)
    per_problem: dict[str, list[float]] = {}
    samples = []
    for (pid, k), text, res in zip(owners, texts, results):
        per_problem.setdefault(pid, []).append(res.reward)
        samples.append({"problem_id": pid, "sample": k, "completion": text,
                        "extracted": res.extracted, "status": res.status, "correct": res.reward > 0})
    acc = sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)
    return {
        "eval/accuracy": acc,
        "eval/num_problems": len(per_problem),
        "eval/n_samples": eval_cfg.n_samples,
        "eval/no_answer_frac": sum(r.status == "no_answer" for r in results) / len(results),
        # grading failures score 0 above and are counted here, never folded into "wrong"
        **{f"eval/{k}": v for k, v in grading_failures(results).items()},
        "samples": samples,
    }
