"""Tests for prefix_rft.eval.benchmarks (vendored files, loader, defect repairs, LUFFY source, OOD sets,
problems files). The grader's acceptance check on every benchmark's gold answers (recorded in
docs/GRADING.md) is tests/test_benchmark_grader_check.py.
"""

import collections
import hashlib
import json
import re
from pathlib import Path

import pytest

from prefix_rft.errors import UserError
from prefix_rft.eval.benchmarks import (
    ALL_BENCHMARKS,
    BENCHMARKS,
    DATA_DIR,
    LUFFY_DATA_SOURCES,
    OOD_BENCHMARKS,
    BenchmarkProblem,
    default_path,
    load_benchmark,
)
from prefix_rft.rollout.reward import extract_final_boxed, grade_one

EXPECTED_ROWS = {
    "aime24": 30,
    "aime25": 30,
    "amc": 83,
    "math500": 500,
    "minerva": 272,
    "olympiadbench": 675,
}

VENDORED = [
    "aime24/aime.json",
    "aime24/test.jsonl",
    "aime25/test.json",
    "amc/amc.json",
    "amc23/test.jsonl",
    "math500/test.jsonl",
    "minerva_math/minerva.json",
    "minerva_math/test.jsonl",
    "olympiadbench/test.jsonl",
    "luffy/valid.all.parquet",
    "luffy/valid.arc_c.parquet",
    "luffy/valid.gpqa.parquet",
]


# --- vendored files -----------------------------------------------------------------------------


def test_vendored_files_match_provenance_sha256():
    provenance = (DATA_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `([^`]+)` \|.*`([0-9a-f]{64})` \|$", provenance, re.M))
    assert sorted(recorded) == sorted(VENDORED)
    for rel, sha in recorded.items():
        assert hashlib.sha256((DATA_DIR / rel).read_bytes()).hexdigest() == sha, rel


# --- loader -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_load_benchmark_rows_and_fields(name):
    problems = load_benchmark(name)
    assert len(problems) == EXPECTED_ROWS[name]
    assert len({p.id for p in problems}) == len(problems)
    for p in problems:
        assert isinstance(p, BenchmarkProblem) and p.benchmark == name
        assert p.problem.strip() and p.answers
        assert all(a == a.strip() and a for a in p.answers)


def test_aime24_leading_zeros_and_ids():
    problems = {p.id: p for p in load_benchmark("aime24")}
    assert problems["2024-I-1"].answers == ("204",)
    assert problems["2024-I-2"].answers == ("25", "025")
    assert problems["2024-II-15"].answers == ("315",)
    assert sum(len(p.answers) == 2 for p in problems.values()) == 7


def test_aime25_control_characters_restored():
    problems = load_benchmark("aime25")
    for p in problems:
        assert not any(ord(c) < 32 and c != "\n" for c in p.problem), p.id
    assert r"\frac{\log_k (5^{k^2 - 1})}" in problems[18].problem
    assert r"circumcircle of $\triangle DEF$" in problems[19].problem
    assert r"\frac" in problems[27].problem


def test_amc_float_answers_become_integers():
    problems = load_benchmark("amc")
    assert problems[0].answers == ("142",)
    assert problems[0].id == "2022_AMC_12A/1"
    assert all(re.fullmatch(r"-?\d+", p.answers[0]) for p in problems)


def test_minerva_gold_is_the_solution_box_then_the_listed_variants():
    problems = {p.id: p for p in load_benchmark("minerva")}
    assert problems["9"].answers == ("9.6",)
    assert problems["20"].answers == ("6630", "6630.65")  # solution's box first, then the list
    assert not any(a.endswith("\n") for p in problems.values() for a in p.answers)
    rows = {str(r["idx"]): r for r in json.loads(default_path("minerva").read_text("utf-8"))}
    for pid, p in problems.items():
        box = extract_final_boxed(rows[pid]["solution"]).strip()
        assert box in p.answers[:2], pid  # first, or second after its LaTeX form


def test_minerva_answers_of_the_previous_subproblem_dropped():
    problems = {p.id: p for p in load_benchmark("minerva")}
    # idx 57 asks for the doubling time; minerva.json lists the population of subproblem 0
    assert "Subproblem 1: What is the doubling time" in problems["57"].problem
    assert problems["57"].answers == ("0.53",)
    assert problems["75"].answers == ("2",)  # resonance frequency, not the amplitude 1/(4-w^2)
    assert problems["226"].answers == ("1700",)  # softening, not working, temperature


def test_minerva_latex_forms_of_misread_answers():
    problems = {p.id: p for p in load_benchmark("minerva")}
    assert problems["13"].answers == ("8.7 \\times 10^{8}", "8.7e8")
    assert problems["44"].answers == ("1 \\times 10^{-5}", "1e-5")
    assert problems["5"].answers == ("\\arcsin(10/13)", "np.arcsin(10/13)")
    assert problems["38"].answers[:2] == ("-1/3", "-1./3")
    # as a model writes them, these now grade correct (Math-Verify reads 8.7e8 as 8.7*e*8)
    for pid, written in [
        ("13", "8.7 \\times 10^{8}"),
        ("5", "\\arcsin\\left(\\frac{10}{13}\\right)"),
        ("38", "-\\frac{1}{3}"),
        ("44", "10^{-5}"),
    ]:
        assert grade_one(f"\\boxed{{{written}}}", problems[pid].answers).status == "correct", pid


def test_minerva_default_agrees_with_luffy_ground_truth():
    default = {" ".join(p.problem.split()): p for p in load_benchmark("minerva")}
    luffy = load_benchmark("minerva", source="luffy")
    assert len(luffy) == len(default) == 272
    for p in luffy:
        assert p.answers[-1] in default[" ".join(p.problem.split())].answers, p.id


def test_olympiadbench_multiple_answer_kept_as_is():
    problems = {p.id: p for p in load_benchmark("olympiadbench")}
    assert problems["1664"].answers == ("$69$,$84$",)
    assert problems["1709"].answers == ("1,3,5",)


def test_load_benchmark_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'gsm8k'") as e:
        load_benchmark("gsm8k")
    for name in ALL_BENCHMARKS:
        assert name in str(e.value)
    assert "path of a .jsonl/.json/.parquet problems file" in str(e.value)
    with pytest.raises(UserError, match="unknown benchmark source 'qwen'.*default, luffy"):
        load_benchmark("amc", source="qwen")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=r"nope.jsonl: cannot read \(No such file or directory\)$"):
        load_benchmark("math500", missing)
    # files are read by the data readers: rows are numbered from 1 (the line number for .jsonl)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('\n{"problem": "1+1?", "unique_id": "a"}\n', encoding="utf-8")
    with pytest.raises(
        UserError, match=r"bad.jsonl row 2: field 'answer' is missing \(expected str\)$"
    ):
        load_benchmark("math500", bad)
    bad.write_text('{"problem": "1+1?", "unique_id": "a", "answer": 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl row 1: field 'answer' is a int \(expected str\)$"):
        load_benchmark("math500", bad)
    bad.write_text('{"problem": " ", "unique_id": "a", "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl row 1: field 'problem' is empty \(expected str\)$"):
        load_benchmark("math500", bad)
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(
        UserError,
        match=r"broken.json line 1: malformed JSON \(Expecting property name enclosed in double "
        r"quotes at column 3\) \(expected a JSON array of objects\)$",
    ):
        load_benchmark("amc", broken)
    notnum = tmp_path / "notnum.json"
    notnum.write_text('[{"problem": "x?", "answer": "1/2"}]', encoding="utf-8")
    with pytest.raises(
        UserError, match=r"notnum.json row 1: field 'answer' is '1/2' \(expected a number\)$"
    ):
        load_benchmark("amc", notnum)


def test_load_benchmark_custom_path(tmp_path):
    f = tmp_path / "mini.json"
    rows = json.loads(default_path("amc").read_text(encoding="utf-8"))[:3]
    f.write_text(json.dumps(rows), encoding="utf-8")
    assert [p.answers for p in load_benchmark("amc", Path(f))] == [("142",), ("144",), ("81",)]


# --- out-of-distribution sets -------------------------------------------------------------------


def _parquet_rows(rel):
    import pyarrow.parquet as pq

    return pq.read_table(DATA_DIR / rel).to_pylist()


def test_ood_sets_parse_to_option_labels():
    arc = load_benchmark("arc_c")
    gpqa = load_benchmark("gpqa_diamond")
    assert (len(arc), len(gpqa)) == (1172, 198)
    assert [p.id for p in arc] == [str(i) for i in range(1172)]
    assert all(p.benchmark == "arc_c" for p in arc) and all(len(p.answers) == 1 for p in arc)
    assert collections.Counter(p.answers[0] for p in gpqa) == {"A": 53, "C": 52, "D": 51, "B": 42}
    arc_labels = collections.Counter(p.answers[0] for p in arc)
    assert set(arc_labels) == {"A", "B", "C", "D", "1", "2", "3", "4"}
    assert sum(arc_labels[d] for d in "1234") == 22  # upstream ARC numbers these options 1) .. 4)
    # the text is LUFFY's user message verbatim: question plus options; the system prompt is gone
    first = arc[0]
    assert first.problem.startswith("An astronomer observes that a planet rotates faster")
    assert "\nA) Planetary density will decrease.\n" in first.problem and first.answers == ("C",)
    assert all(p.problem.startswith("Answer the following multiple choice question.") for p in gpqa)
    assert all("\nA) " in p.problem and "\nD) " in p.problem for p in gpqa)
    assert not any("systematic, thorough reasoning" in p.problem for p in arc + gpqa)
    for p in arc + gpqa:  # the label is an option of the problem
        assert f"\n{p.answers[0]}) " in p.problem, p.id


def test_ood_sets_are_the_same_in_both_sources():
    for name in OOD_BENCHMARKS:
        assert load_benchmark(name, source="luffy") == load_benchmark(name)
        assert default_path(name) == default_path(name, source="luffy")
    assert default_path("gpqa_diamond") == DATA_DIR / "luffy/valid.gpqa.parquet"


# --- LUFFY source ---------------------------------------------------------------------------------


def test_luffy_source_counts_match_data_source_counts():
    counts = collections.Counter(r["data_source"] for r in _parquet_rows("luffy/valid.all.parquet"))
    assert counts == {
        "aime": 960,
        "aime25": 960,
        "amc": 2656,
        "math": 500,
        "minerva": 272,
        "olympiad_bench": 675,
    }
    for name in BENCHMARKS:
        problems = load_benchmark(name, source="luffy")
        assert len(problems) == counts[LUFFY_DATA_SOURCES[name]], name
        assert len({p.id for p in problems}) == len(problems)
        assert all(p.benchmark == name and p.problem.strip() and p.answers for p in problems)
        assert default_path(name, source="luffy") == DATA_DIR / "luffy/valid.all.parquet"


def test_luffy_source_repeats_and_ids():
    aime = load_benchmark("aime24", source="luffy")
    assert [p.id for p in aime[:33]] == [f"0#{k}" for k in range(32)] + ["1#0"]
    assert len({p.problem for p in aime}) == 30
    assert all(
        p == BenchmarkProblem("aime24", p.id, aime[0].problem, aime[0].answers) for p in aime[:32]
    )
    amc = load_benchmark("amc", source="luffy")
    assert len({p.id.split("#")[0] for p in amc}) == 83
    assert collections.Counter(p.id.split("#")[0] for p in amc) == {str(i): 32 for i in range(83)}
    math = load_benchmark("math500", source="luffy")
    assert [p.id for p in math[:3]] == ["0", "1", "2"]


def test_luffy_source_text_and_repairs():
    rows = [r for r in _parquet_rows("luffy/valid.all.parquet") if r["data_source"] == "aime25"]
    aime25 = load_benchmark("aime25", source="luffy")
    assert [p.problem for p in aime25] == [r["prompt"][-1]["content"] for r in rows]  # verbatim
    assert r"$17_{b}$" in aime25[0].problem  # LUFFY's formatting, not the default file's 17_b
    assert {p.answers for p in aime25 if p.id.startswith("19#")} == {("336", "336^\\circ")}
    amc = load_benchmark("amc", source="luffy")
    assert amc[0].answers == ("142", "142.0") and amc[0].problem == load_benchmark("amc")[0].problem
    assert {p.answers for p in amc if p.answers[1] == "-1.0"} == {("-1", "-1.0")}
    aime24 = {p.id: p for p in load_benchmark("aime24", source="luffy")}
    assert aime24["1#0"].answers == ("25", "025")
    minerva = {p.id: p for p in load_benchmark("minerva", source="luffy")}
    assert minerva["1"].answers == ("4.5 \\times 10^{33}", "4.5e33")
    assert minerva["5"].answers == ("\\arcsin(10/13)", "np.arcsin(10/13)")
    assert minerva["38"].answers == ("-1/3", "-1./3")
    assert minerva["0"].answers == ("1.6",)


def _write_luffy_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def _luffy_row(source, index, text, gold):
    return {
        "data_source": source,
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}],
        "ability": "math",
        "reward_model": {"ground_truth": gold, "style": "rule"},
        "extra_info": {"index": index, "split": "default"},
    }


def test_luffy_source_from_another_file(tmp_path):
    f = tmp_path / "valid.parquet"
    _write_luffy_parquet(
        f,
        [
            _luffy_row("aime", 0, "P0", "023"),
            _luffy_row("aime", 0, "P0", "023"),
            _luffy_row("math", 0, "Q0", "\\frac12"),
        ],
    )
    got = load_benchmark("aime24", f, source="luffy")
    assert got == [
        BenchmarkProblem("aime24", "0#0", "P0", ("23", "023")),
        BenchmarkProblem("aime24", "0#1", "P0", ("23", "023")),
    ]
    assert load_benchmark("math500", f, source="luffy") == [
        BenchmarkProblem("math500", "0", "Q0", ("\\frac12",))
    ]
    with pytest.raises(
        UserError,
        match=r"valid.parquet: no rows with data_source 'minerva'.*"
        r"found: aime, math",
    ):
        load_benchmark("minerva", f, source="luffy")


def test_luffy_source_user_errors(tmp_path):
    f = tmp_path / "nogold.parquet"
    row = _luffy_row("gpqa", 7, "Q?", "A")
    row["reward_model"] = {"ground_truth": None, "style": "rule"}
    _write_luffy_parquet(f, [_luffy_row("gpqa", 6, "Q?", "B"), row])
    with pytest.raises(
        UserError,
        match=r"nogold.parquet row 2: field 'reward_model.ground_truth' is missing "
        r"\(expected str\)$",
    ):
        load_benchmark("gpqa_diamond", f)
    g = tmp_path / "nouser.parquet"
    row = _luffy_row("gpqa", 0, "Q?", "A")
    row["prompt"] = [{"role": "system", "content": "sys"}]
    _write_luffy_parquet(g, [row])
    with pytest.raises(
        UserError,
        match=r"nouser.parquet row 1: field 'prompt' has no user message \(expected a chat list "
        r"of \{role, content\} messages with a user message\)$",
    ):
        load_benchmark("gpqa_diamond", g)
    h = tmp_path / "flat.parquet"
    _write_luffy_parquet(h, [{"problem": "1+1?", "answer": "2"}])
    with pytest.raises(UserError, match=r"flat.parquet: missing column\(s\) data_source, prompt"):
        load_benchmark("arc_c", h)
    j = tmp_path / "junk.parquet"
    j.write_text("not parquet", encoding="utf-8")
    with pytest.raises(UserError, match=r"junk.parquet: cannot read as Parquet"):
        load_benchmark("amc", j, source="luffy")


# --- a problems file of the user's own ------------------------------------------------------------


def test_load_problems_file_by_path(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(
        '{"problem": "What is 1+1?", "answer": "2"}\n'
        '{"id": "q2", "question": "Half of 3? Please reason step by step, and put your final '
        'answer within \\\\boxed{}.", "answer": "\\\\frac{3}{2}"}\n',
        encoding="utf-8",
    )
    expected = [
        BenchmarkProblem("mine", "mine-1", "What is 1+1?", ("2",)),
        BenchmarkProblem("mine", "q2", "Half of 3?", ("\\frac{3}{2}",)),
    ]
    assert load_benchmark(str(f)) == expected
    assert load_benchmark(f) == expected  # a Path works too
    assert load_benchmark(str(f), source="luffy") == expected  # source is for named benchmarks
    luffy_format = tmp_path / "subset.parquet"
    _write_luffy_parquet(luffy_format, [_luffy_row("amc", 3, "Find x.", "4.0")])
    assert load_benchmark(str(luffy_format)) == [
        BenchmarkProblem("subset", "3", "Find x.", ("4.0",))
    ]


def test_load_problems_file_user_errors(tmp_path, monkeypatch):
    f = tmp_path / "noanswer.jsonl"
    f.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"noanswer.jsonl row 2: field 'answer' is missing"):
        load_benchmark(str(f))
    with pytest.raises(UserError, match=r"nothere.jsonl: file not found"):
        load_benchmark(str(tmp_path / "nothere.jsonl"))
    with pytest.raises(UserError, match=r"not both"):
        load_benchmark(str(f), path=f)
    # a bare name that exists as a file in the working directory is a path, a known name never is
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").write_text('{"problem": "3+3?", "answer": "6"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported file type"):
        load_benchmark("local")
    (tmp_path / "amc").mkdir()
    assert len(load_benchmark("amc")) == 83
