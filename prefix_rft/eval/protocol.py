"""Benchmark evaluation: protocols, sampling with any engine, Math-Verify grading, result files.

A *protocol* fixes everything that changes a number: samples per problem (n, per benchmark if
needed), temperature, top_p, max new tokens, seed, grader and chat template. Every result
records its protocol and the model/checkpoint it evaluated, so two numbers are comparable only
when their protocols are.

    default  n = 32 on every benchmark, temperature 0.6, top_p 0.95, 8,192 new tokens, Math-Verify
    paper    as default, but n = 32 only on AIME24/AIME25/AMC and n = 1 on the large sets
             (the paper's Table 1 protocol: avg@32 on the small sets, avg@1 elsewhere)

Outputs (`write_results`): `samples.parquet` (benchmark, problem_id, sample, completion,
extracted, correct, status, finish_reason, num_tokens) and `summary.json` (per benchmark:
avg@n, pass@k, maj@n, bootstrap 95% CI, counts; the macro average over benchmarks; the protocol;
the model). `prefix-rft eval` and the pipeline's `eval_task` both call `evaluate_benchmark`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefix_rft.errors import UserError
from prefix_rft.rollout.engines.base import GenerationRequest, SamplingParams

SAMPLES_FILE = "samples.parquet"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Protocol:
    name: str
    n: int = 32
    n_per_benchmark: dict = field(default_factory=dict)
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192
    seed: int = 0
    grader: str = "math-verify (last \\boxed{})"

    def n_for(self, benchmark: str) -> int:
        return int(self.n_per_benchmark.get(benchmark, self.n))

    def replace(self, **kw) -> Protocol:
        kw = {k: v for k, v in kw.items() if v is not None}
        if "n" in kw:  # an explicit n applies to every benchmark
            kw.setdefault("n_per_benchmark", {})
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS = {
    "default": Protocol("default"),
    "paper": Protocol("paper", n=1, n_per_benchmark={"aime24": 32, "aime25": 32, "amc": 32}),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


@dataclass
class BenchmarkResult:
    benchmark: str
    records: list[dict]  # one per (problem, sample)
    summary: dict


def evaluate_benchmark(engine, tokenizer, benchmark: str, problems: Sequence, protocol: Protocol,
                       grader, *, think_tags: bool = False, model: str = "",
                       chat_template: str | None = None, n_boot: int = 10000) -> BenchmarkResult:
    """Sample `protocol.n_for(benchmark)` completions per problem and grade them.

    `problems`: `BenchmarkProblem`s (problem text + every acceptable answer) or `Problem`s.
    """
    from prefix_rft.eval.metrics import summarize
    from prefix_rft.rollout.prompting import encode_prompt

    if not problems:
        raise UserError(f"benchmark {benchmark}: no problems to evaluate")
    n = protocol.n_for(benchmark)
    texts = [getattr(p, "problem", None) or p.prompt for p in problems]
    golds = [tuple(getattr(p, "answers", None) or (p.answer,)) for p in problems]
    reqs = [GenerationRequest(encode_prompt(tokenizer, t, think_tags=think_tags),
                              protocol.max_new_tokens) for t in texts]
    sampling = SamplingParams(protocol.temperature, protocol.top_p, seed=protocol.seed)
    t0 = time.perf_counter()
    outs = engine.generate(reqs, n, sampling)
    gen_s = time.perf_counter() - t0
    flat, owners = [], []
    for i, samples in enumerate(outs):
        for k, o in enumerate(samples):
            flat.append(o)
            owners.append((i, k))
    completions = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in flat]
    grades = grader.grade(completions, [golds[i] for i, _ in owners])
    records = []
    correct: list[list[bool]] = [[] for _ in problems]
    answers: list[list[str | None]] = [[] for _ in problems]
    for (i, k), o, text, g in zip(owners, flat, completions, grades):
        ok = g.reward > 0
        correct[i].append(ok)
        answers[i].append(g.extracted)
        records.append({
            "benchmark": benchmark, "problem_id": str(problems[i].id), "sample": k,
            "completion": text, "extracted": g.extracted, "correct": ok, "status": g.status,
            "finish_reason": o.finish_reason, "num_tokens": len(o.token_ids),
        })
    stats = summarize(correct, answers, seed=protocol.seed, n_boot=n_boot)
    n_tokens = sum(r["num_tokens"] for r in records)
    summary = {
        "benchmark": benchmark,
        "metric": f"avg_at_{n}",
        **stats,
        "no_answer_frac": sum(r["status"] == "no_answer" for r in records) / len(records),
        **grading_failures(records),
        "truncated_frac": sum(r["finish_reason"] == "length" for r in records) / len(records),
        "mean_tokens": n_tokens / len(records),
        "generation_seconds": gen_s,
        "samples_per_second": len(records) / gen_s if gen_s > 0 else None,
        "tokens_per_second": n_tokens / gen_s if gen_s > 0 else None,
        "protocol": protocol.to_dict(),
        "model": model,
        "chat_template": chat_template or "tokenizer",
        "think_tags": think_tags,
    }
    return BenchmarkResult(benchmark, records, summary)


def grading_failures(records: Sequence) -> dict[str, int]:
    """How many samples the grader could not grade: ``grading_timeouts`` (status ``timeout``) and
    ``grading_errors`` (status ``error``). Both score 0 in every accuracy metric, and are counted
    here so that a score lowered by grading failures is never mistaken for wrong answers. Takes
    records with a ``status`` key or objects with a ``status`` attribute."""
    statuses = [r["status"] if isinstance(r, dict) else r.status for r in records]
    return {"grading_timeouts": sum(s == "timeout" for s in statuses),
            "grading_errors": sum(s == "error" for s in statuses)}


def macro(results: Sequence[BenchmarkResult]) -> float | None:
    from prefix_rft.eval.metrics import macro_average

    return macro_average({r.benchmark: r.summary["avg_at_n"] for r in results}) if results else None


def write_results(out_dir: str | Path, results: Sequence[BenchmarkResult], *, extra: dict | None = None) -> dict:
    """`samples.parquet` + `summary.json` under `out_dir`; returns the summary dict. Each file is
    replaced whole (written beside its name, then renamed), so `prefix-rft eval` can rewrite them
    after every benchmark and a reader never sees a half-written file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for res in results for r in res.records]
    schema = pa.schema([("benchmark", pa.string()), ("problem_id", pa.string()), ("sample", pa.int32()),
                        ("completion", pa.string()), ("extracted", pa.string()),
                        ("correct", pa.bool_()), ("status", pa.string()),
                        ("finish_reason", pa.string()), ("num_tokens", pa.int32())])
    summary = {"benchmarks": {r.benchmark: r.summary for r in results},
               "macro_avg": macro(results), **(extra or {})}
    samples_tmp, summary_tmp = out / (SAMPLES_FILE + ".tmp"), out / (SUMMARY_FILE + ".tmp")
    try:  # each file is written beside its name and renamed: never a half-written file
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), samples_tmp)
        summary_tmp.write_text(json.dumps(summary, indent=1))
        os.replace(samples_tmp, out / SAMPLES_FILE)
        os.replace(summary_tmp, out / SUMMARY_FILE)
    except OSError as e:
        raise UserError(f"{out}: cannot write the evaluation results ({e.strerror or e})") from None
    return summary


def per_problem(samples_path: str | Path) -> dict[str, dict[str, float]]:
    """benchmark -> problem id -> accuracy over its samples, from a `samples.parquet`."""
    import pyarrow.parquet as pq

    return problem_accuracy(
        pq.read_table(samples_path, columns=["benchmark", "problem_id", "correct"]).to_pylist())


def problem_accuracy(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """benchmark -> problem id -> accuracy over its samples, from per-sample records."""
    acc: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        acc.setdefault(r["benchmark"], {}).setdefault(r["problem_id"], []).append(bool(r["correct"]))
    return {b: {p: sum(v) / len(v) for p, v in d.items()} for b, d in acc.items()}


def resolve_model_dir(uri: str, scratch: str | Path) -> str:
    """What to load for `--model`: a checkpoint (local dir or s3:// URI with MANIFEST.json, its
    files verified) -> its `model/` dir; a HF model dir -> itself; a built-in alias or a hub id
    -> unchanged. A path that does not exist fails here, before anything is loaded or generated."""
    from prefix_rft.builtin_models import BUILTIN_MODELS
    from prefix_rft.io.store import MANIFEST, fetch_checkpoint, is_s3, open_checkpoint

    uri = str(uri)
    if is_s3(uri):
        ref = open_checkpoint(uri)  # UserError naming the URI when absent / incomplete
        return str(fetch_checkpoint(ref, Path(scratch) / "checkpoint") / "model")
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
    if path.is_dir():
        if (path / MANIFEST).exists():
            return str(fetch_checkpoint(open_checkpoint(str(path))) / "model")
        if (path / "model" / "config.json").exists():  # a checkpoint without a manifest
            return str(path / "model")
        if (path / "config.json").exists():
            return str(path)
        raise UserError(f"--model {uri}: neither a checkpoint (MANIFEST.json) nor a model directory "
                        "(config.json)")
    if uri in BUILTIN_MODELS:  # converted on first use by the engine (load_policy; the vllm builder)
        return uri
    if path.exists() or uri.startswith((".", "/", "~")) or uri.count("/") > 1:
        raise UserError(f"--model {uri}: no such checkpoint or model directory")
    return uri  # a hub id

