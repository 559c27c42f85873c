"""Per-difficulty held-out evaluation: `synthetic:LEVEL` in `pipeline.benchmarks`.

Each level's benchmark is that level's whole `test` split of the built-in arithmetic task
(prefix_rft/data/synthetic.py), evaluated in its own (epoch, benchmark) cell with the config's
`eval` section, like `heldout`. The expected split sizes are worked out below from the task's
definition, independently of the loader.
"""

from __future__ import annotations

import hashlib

import pytest

from prefix_rft.data.synthetic import pool_size, synthetic_arithmetic
from prefix_rft.errors import UserError
from prefix_rft.eval.benchmarks import benchmark_label, load_benchmark
from prefix_rft.io import run_layout
from steps import evaluate as seval
from steps.flow_config import resolve_flow

SPECS = ["synthetic:add", "synthetic:mul", "synthetic:word"]


def _keys(level: str) -> list[str]:
    """The task's problems by their arithmetic key (the definition in synthetic.py's docstring)."""
    if level == "tiny":  # a + b, a, b in 0..4: 5 x 5 = 25
        return [f"{a}+{b}" for a in range(5) for b in range(5)]
    if level == "add":  # a + b, a, b in 1..99: 99 x 99 = 9801
        return [f"{a}+{b}" for a in range(1, 100) for b in range(1, 100)]
    if level == "mul":  # a * b, a in 10..99, b in 2..9: 90 x 8 = 720
        return [f"{a}x{b}" for a in range(10, 100) for b in range(2, 10)]
    # word: a + b - c (a, b in 2..20, c in 1..a+b-1): sum over 361 pairs of (a+b-1) = 361 x 21
    # = 7581; boxes a * b + c (a, b in 2..9, c in 1..20): 8 x 8 x 20 = 1280; 8861 in all
    return ([f"{a}+{b}-{c}" for a in range(2, 21) for b in range(2, 21) for c in range(1, a + b)]
            + [f"{a}x{b}+{c}" for a in range(2, 10) for b in range(2, 10) for c in range(1, 21)])


def _is_test(key: str) -> bool:  # "one key in 5 (by hash) is a test problem"
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % 5 == 0


# level -> (problems in all, test split); the test counts are what _is_test keeps (~20% each)
SIZES = {"tiny": (25, 7), "add": (9801, 1973), "mul": (720, 158), "word": (8861, 1742)}


def minimal(**pipeline) -> dict:
    return {"method": "rft", "model": {"name_or_path": "some-model"},
            "data": {"train": "synthetic:add,mul,word"}, "pipeline": pipeline}


@pytest.mark.parametrize("level", list(SIZES))
def test_split_sizes_per_level(level):
    total, test = SIZES[level]
    keys = _keys(level)
    assert len(keys) == total
    assert sum(map(_is_test, keys)) == test
    problems = load_benchmark(f"synthetic:{level}")
    assert len(problems) == test == pool_size(level, "test")
    assert pool_size(level, "train") == total - test
    # every problem is a test-split key, once; the label is the benchmark cell's name
    assert sorted(p.id for p in problems) == sorted(f"synth-{level}-{k}" for k in keys
                                                    if _is_test(k))
    assert {p.benchmark for p in problems} == {f"synthetic_{level}"}


def test_no_test_problem_is_in_the_training_split():
    for level in ("add", "mul", "word"):
        train = synthetic_arithmetic(pool_size(level, "train"), levels=(level,), split="train")
        test = load_benchmark(f"synthetic:{level}")
        assert not {p.prompt for p in train} & {p.problem for p in test}


def test_problem_and_answer():
    p = next(p for p in load_benchmark("synthetic:mul") if p.id == "synth-mul-76x7")
    assert (p.problem, p.answers) == ("What is 76 * 7?", ("532",))


def test_labels_and_metric_keys():
    assert [benchmark_label(s) for s in SPECS] == ["synthetic_add", "synthetic_mul",
                                                   "synthetic_word"]
    assert [seval.benchmark_name(s) for s in SPECS] == ["synthetic_add", "synthetic_mul",
                                                       "synthetic_word"]
    assert run_layout.metric_key("synthetic_add", 4) == "eval/synthetic_add/avg_at_4"


def test_plan_eval_one_cell_per_level():
    cfg = resolve_flow(minimal(benchmarks=SPECS, eval_base=True))
    done = [{"epoch": 1, "checkpoint": {"uri": "c1"}}]
    items = seval.plan_eval(cfg, done, None)
    # (epoch 0, epoch 1) x 3 levels = 6 cells, epoch-major
    assert [(i["epoch"], i["benchmark"], i["spec"]) for i in items] == [
        (e, f"synthetic_{lv}", f"synthetic:{lv}") for e in (0, 1) for lv in ("add", "mul", "word")]


def test_protocol_is_the_eval_section_like_heldout():
    cfg = resolve_flow({**minimal(benchmarks=SPECS, eval_protocol="paper", eval_n=32),
                   "seed": 7, "eval": {"n_samples": 4, "temperature": 0.6, "top_p": 0.95,
                                       "max_new_tokens": 96}})
    for spec in SPECS:
        p = seval.protocol_for(cfg, spec)
        assert p == seval.protocol_for(cfg, "heldout")
        assert (p.n_for(benchmark_label(spec)), p.temperature, p.top_p, p.max_new_tokens,
                p.seed) == (4, 0.6, 0.95, 96, 7)
    # a named benchmark keeps the pipeline protocol (paper, eval_n 32)
    assert seval.protocol_for(cfg, "math500").n_for("math500") == 32


@pytest.mark.parametrize("num_problems, expected", [
    (64, {"add": 64, "mul": 64, "word": 64}),
    (200, {"add": 200, "mul": 158, "word": 200}),  # mul's test split has only 158
    (0, {"add": 1973, "mul": 158, "word": 1742}),  # 0 = the whole split
])
def test_problems_per_cell(num_problems, expected):
    cfg = resolve_flow({**minimal(benchmarks=SPECS, eval_max_problems=3),  # not for these cells
                   "eval": {"num_problems": num_problems}})
    for level, n in expected.items():
        assert len(seval._problems(cfg, f"synthetic:{level}", data_ref={})) == n


def test_same_problems_for_every_training_seed():
    a = resolve_flow({**minimal(benchmarks=SPECS), "seed": 1, "eval": {"num_problems": 32}})
    b = resolve_flow({**minimal(benchmarks=SPECS), "seed": 2, "eval": {"num_problems": 32}})
    for spec in SPECS:
        assert seval._problems(a, spec, {}) == seval._problems(b, spec, {})


@pytest.mark.parametrize("spec, message", [
    ("synthetic:div", "unknown synthetic level 'div'; expected one of synthetic:tiny, "
                      "synthetic:add, synthetic:mul, synthetic:word"),
    ("synthetic:add,mul", "one synthetic level per benchmark"),
    ("synthetic:", "unknown synthetic level ''"),
])
def test_unknown_level_names_the_key(spec, message):
    with pytest.raises(UserError) as e:
        resolve_flow(minimal(benchmarks=["synthetic:add", spec]), source="study.yaml")
    assert str(e.value).startswith(f"study.yaml: key 'pipeline.benchmarks': benchmark {spec!r}: ")
    assert message in str(e.value)
    with pytest.raises(UserError, match="synthetic level"):
        load_benchmark(spec)


def test_eval_task_on_a_level(smollm2_dir, tmp_path):
    """One real cell (a 1-layer random-weight model with SmolLM2's tokenizer, no tracker)."""
    cfg = resolve_flow({"method": "rft", "seed": 1,
                   "model": {"name_or_path": str(smollm2_dir),
                             "random_init": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                             "seed": 0}},
                   "data": {"train": "synthetic:tiny"}, "reward": {"num_workers": 0},
                   "eval": {"num_problems": 5, "n_samples": 4, "temperature": 0.6,
                            "max_new_tokens": 4},
                   "pipeline": {"benchmarks": ["synthetic:mul"]}})
    item = seval.plan_eval(cfg, [], None)[0]
    out = seval.eval_task(cfg, item, data_ref={}, n_boot=100)
    assert (out["epoch"], out["benchmark"], out["metric"]) == (0, "synthetic_mul",
                                                               "eval/synthetic_mul/avg_at_4")
    assert out["num_problems"] == 5 and out["protocol"]["name"] == "heldout"
    assert len(out["per_problem"]) == 5 and 0.0 <= out["value"] <= 1.0


def test_pipeline_data_without_a_heldout_set(tmp_path):
    """data.test: null (the study, the paper configs): filter_data writes an empty test set and
    every later task reads it back as [] (the synthetic:LEVEL cells do not need it)."""
    from steps.data import filter_data, read_data

    cfg = resolve_flow({**minimal(benchmarks=SPECS), "data": {"train": "synthetic:add,mul,word",
                                                         "test": None, "synthetic_train_size": 6}})
    m = filter_data(cfg, lineage_prefix=str(tmp_path / "lineage"))
    assert (m["num_train"], m["num_test"]) == (6, 0)
    train, test = read_data(m["data"])
    assert [p.id.split("-")[1] for p in train] == ["add", "mul", "word"] * 2 and test == []
