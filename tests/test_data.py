"""prefix_rft.data: readers for every schema, LUFFY's OpenR1 filter, data fractions, the
synthetic task and the one-line errors for bad input. Fixtures live in tests/data/."""

from __future__ import annotations

import json
import re
import sys
import types
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefix_rft.data import (
    FilterStats,
    Problem,
    data_fraction,
    dedupe_problems,
    filter_openr1,
    iter_rows,
    load_problems,
    read_problems,
    save_problems,
    synthetic_arithmetic,
)
from prefix_rft.data.filter import filter_openr1_dataset, filter_openr1_source, openr1_parts
from prefix_rft.data.loading import in_memory_dataset, open_parts
from prefix_rft.data.readers import detect_schema, iter_file, strip_instruction, unwrap_boxed
from prefix_rft.data.synthetic import LEVELS, pool_size
from prefix_rft.errors import UserError

DATA = Path(__file__).parent / "data"
MESSAGES = DATA / "openr1_sample_messages.jsonl"
RAW = DATA / "openr1_raw.jsonl"
LUFFY_JSONL = DATA / "luffy_sample.jsonl"
LUFFY_PARQUET = DATA / "luffy_sample.parquet"
SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}"


def words(text: str) -> int:
    return len(text.split())


def simple_gold_ok(answer: str) -> bool:
    return answer not in ("proof", "\\text{}")


def raw_rows() -> list[dict]:
    return [json.loads(line) for line in RAW.read_text().splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
# Problem and the save format


def test_problem_stores_demonstrations_as_a_tuple():
    p = Problem("a", "What is 1 + 1?", "2", ["1 + 1 = 2.\nThe answer is \\boxed{2}."])
    assert p.demonstrations == ("1 + 1 = 2.\nThe answer is \\boxed{2}.",)
    assert hash(p) == hash(Problem("a", "What is 1 + 1?", "2", tuple(p.demonstrations)))
    assert p.source == ""


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_then_load_round_trips(tmp_path, suffix):
    problems = [
        Problem(
            "p1", "What is $\\frac{1}{2}$ of 6?", "3", ("Half of 6 is 3. \\boxed{3}", "x"), "s"
        ),
        Problem("p2", "Ünïcode prompt?", "\\frac{3}{4}", (), ""),
    ]
    path = save_problems(problems, tmp_path / "sub" / f"problems{suffix}")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    assert load_problems(path) == problems
    assert read_problems(path, require_demos=False) == problems  # auto-detects "problems"
    assert read_problems(path, schema="problems", require_demos=False) == problems


def test_problem_record_module_imports_no_reader():
    """The record sits below every reader: `problem.py` imports nothing of `prefix_rft.data`
    (not even inside a function), so problem <-> readers cannot form an import cycle."""
    from tests.test_architecture import ROOT, import_graph

    imported = set(import_graph(ROOT, ("prefix_rft",)).successors("prefix_rft.data.problem"))
    assert imported and not [m for m in imported if m.startswith("prefix_rft.data")]


def test_save_rejects_unknown_extension(tmp_path):
    with pytest.raises(UserError, match=r"problems\.csv.*expected one of \.jsonl, \.parquet"):
        save_problems([], tmp_path / "problems.csv")


# ---------------------------------------------------------------------------------------------
# Readers, one schema at a time


def test_messages_sample_reads_all_54_rows():
    problems = read_problems(MESSAGES)
    assert len(problems) == 54
    first = problems[0]
    assert first.id == "openr1_sample_messages-1"
    assert first.answer == "180"  # unwrapped from \boxed{180}
    assert first.prompt.startswith("3. (6 points) A construction company was building a tunnel.")
    assert len(first.demonstrations) == 1
    assert first.demonstrations[0].endswith("The final answer is \\boxed{180}.")
    assert [p.id for p in problems[:3]] == [f"openr1_sample_messages-{i}" for i in (1, 2, 3)]
    assert all(p.answer and "\\boxed" not in p.answer for p in problems)
    assert detect_schema(json.loads(MESSAGES.read_text().splitlines()[0])) == "messages"


def test_luffy_jsonl_strips_the_instruction_and_reads_every_target_shape():
    problems = read_problems(LUFFY_JSONL)
    assert [p.id for p in problems] == ["0", "1", "2", "3"]  # extra_info.index
    assert [p.prompt for p in problems] == [
        "What is $2 + 3$?",
        "Solve $x^2 = 49$ for $x > 0$.",
        "How many sides does a hexagon have?",
        "What is $1/2 + 1/4$?",
    ]
    assert [p.answer for p in problems] == ["5", "7", "6", "\\frac{3}{4}"]
    assert all(p.source == "openr1" for p in problems)
    # target as [{role, content}], as a string, as [str]: one demonstration each
    assert [len(p.demonstrations) for p in problems] == [1, 1, 1, 1]
    assert problems[2].demonstrations[0].endswith("\\boxed{6}$.")
    assert problems[3].demonstrations[0].endswith("\\boxed{\\frac{3}{4}}$.")


def test_luffy_parquet_reads_the_published_layout():
    problems = read_problems(LUFFY_PARQUET)
    assert [(p.id, p.prompt, p.answer) for p in problems] == [
        ("10", "What is $10 - 4$?", "6"),
        ("11", "What is $3 \\cdot 5$?", "15"),
        ("12", "Find the remainder when $17$ is divided by $5$.", "2"),
    ]
    assert problems[0].demonstrations == (
        "<think>\nLet me work it out.\n</think>\nThe answer is $\\boxed{6}$.",
    )


def test_luffy_prefers_prefix_rft_demos_list(tmp_path):
    row = json.loads(LUFFY_JSONL.read_text().splitlines()[0])
    row["demos"] = ["demo one \\boxed{5}", "demo two \\boxed{5}"]
    (p,) = read_problems(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert p.demonstrations == ("demo one \\boxed{5}", "demo two \\boxed{5}")


@pytest.mark.parametrize(
    "text",
    [
        "Find $x$." + SUFFIX,
        "Find $x$." + SUFFIX + ".",
        "Find $x$.\n Please reason step by step, and put your final answer within \\boxed{}.",
        "Find $x$. Let's think step by step and output the final answer within \\boxed{}.",
        "Find $x$.",
        "  Find $x$.\n",
    ],
)
def test_strip_instruction(text):
    assert strip_instruction(text) == "Find $x$."


def test_unwrap_boxed_balances_braces():
    assert unwrap_boxed("\\boxed{180}") == "180"
    assert unwrap_boxed("$\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert unwrap_boxed("a \\boxed{1} then \\boxed{2}") == "2"
    assert unwrap_boxed("42") == "42"


def test_openr1_raw_keeps_the_math_verify_correct_generations_in_order():
    problems = read_problems(RAW, require_demos=False, limit=6)
    assert [p.id for p in problems] == ["u-01", "u-02", "u-03", "u-04", "u-05", "u-06"]
    rows = raw_rows()
    assert problems[1].demonstrations == tuple(rows[1]["generations"][1:])  # [False, True, True]
    assert problems[3].demonstrations == (rows[3]["generations"][0],)  # not length-filtered
    assert problems[5].demonstrations == ()  # [False, None]
    assert problems[0].prompt == "Compute $3 + 4$." and problems[0].answer == "7"
    assert all(p.source == "openr1" for p in problems)


def test_openr1_raw_row_without_correct_generation_is_an_error_when_demos_are_required():
    with pytest.raises(UserError) as err:
        read_problems(RAW)
    msg = one_line(err)
    assert msg.startswith(f"{RAW} row 6: field 'generations' has no demonstration (expected ")
    assert "filter_openr1" in msg and "require_demos=False" in msg


def test_plain_json_array(tmp_path):
    rows = [
        {"question": "What is 2 + 2?", "answer": 4, "solutions": ["2 + 2 = 4. \\boxed{4}"]},
        {
            "problem": "What is 3 + 3?",
            "answer": "6",
            "solution": "3 + 3 = 6. \\boxed{6}",
            "id": "q2",
        },
        {"problem": "What is 1.5 * 2?", "answer": 3.0, "demonstrations": ["a", "b"], "source": "s"},
    ]
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(rows))
    problems = read_problems(path)
    assert [(p.id, p.prompt, p.answer, len(p.demonstrations)) for p in problems] == [
        ("plain-1", "What is 2 + 2?", "4", 1),
        ("q2", "What is 3 + 3?", "6", 1),
        ("plain-3", "What is 1.5 * 2?", "3.0", 2),
    ]
    assert problems[2].source == "s"


def test_plain_accepts_prompt_and_final_answer(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([{"prompt": "Find $b$." + SUFFIX, "answer": "70"}]))
    (p,) = read_problems(path, require_demos=False)
    assert (p.id, p.prompt, p.answer, p.demonstrations) == ("eval-1", "Find $b$.", "70", ())
    rows = [{"question": "Q?", "final_answer": ["2"], "solution": ["S"], "id": 1606}]
    (p,) = read_problems(write_jsonl(tmp_path / "olympiad.jsonl", rows))
    assert (p.id, p.prompt, p.answer, p.demonstrations) == ("1606", "Q?", "2", ("S",))


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text(json.dumps({"problem": "P?", "answer": "1", "solution": "S"}) + "\n")
    assert read_problems(path)[0].prompt == "P?"


def test_schema_can_be_forced(tmp_path):
    # fields that auto-detection reads as "problems" (prompt str + answer + demonstrations)
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [
            {
                "prompt": "Q?" + SUFFIX,
                "answer": "1",
                "demonstrations": ["d"],
                "target": "t",
                "reward_model": {"ground_truth": "2"},
            }
        ],
    )
    assert read_problems(path)[0].answer == "1"
    forced = read_problems(path, schema="luffy")[0]
    assert (forced.prompt, forced.answer, forced.demonstrations) == ("Q?", "2", ("t",))


def test_directory_reads_only_the_files_of_the_split(tmp_path):
    row = {"problem": "P{}?", "answer": "1", "solution": "S"}
    write_jsonl(tmp_path / "train-00000-of-00002.jsonl", [{**row, "problem": "A?"}])
    write_jsonl(tmp_path / "train-00001-of-00002.jsonl", [{**row, "problem": "B?"}])
    write_jsonl(tmp_path / "test.jsonl", [{**row, "problem": "C?"}])
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.prompt for p in read_problems(tmp_path)] == ["A?", "B?"]
    assert [p.prompt for p in read_problems(tmp_path, split="test")] == ["C?"]
    with pytest.raises(UserError, match=r"no file for split 'validation' \(found: test\.jsonl, "):
        read_problems(tmp_path, split="validation")


def test_directory_without_split_names_reads_every_file_and_detects_each_schema(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"problem": "A?", "answer": "1", "solution": "S"}])
    pq.write_table(pq.read_table(LUFFY_PARQUET), tmp_path / "b.parquet")
    problems = read_problems(tmp_path)
    assert [p.prompt for p in problems][:2] == ["A?", "What is $10 - 4$?"]
    assert len(problems) == 4


def test_limit_and_unique_ids(tmp_path):
    assert [p.id for p in read_problems(MESSAGES, limit=2)] == [
        "openr1_sample_messages-1",
        "openr1_sample_messages-2",
    ]
    assert read_problems(MESSAGES, limit=0) == []
    row = {"id": "same", "problem": "P?", "answer": "1", "solution": "S"}
    problems = read_problems(write_jsonl(tmp_path / "dup.jsonl", [row, row, row]))
    assert [p.id for p in problems] == ["same", "same@dup-2", "same@dup-3"]


def test_iter_rows_gives_raw_rows_with_file_and_row_number():
    rows = list(iter_rows(RAW))
    assert len(rows) == 12
    assert (rows[0].where, rows[0].number, rows[0].fields["uuid"]) == (str(RAW), 1, "u-01")


def test_benchmark_file_reader_never_imports_datasets(monkeypatch):
    """`iter_file` (the benchmark registry's reader of shipped files) reads directly."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # any import of it would now fail
    assert [r.fields["extra_info"]["index"] for r in iter_file(LUFFY_PARQUET)] == [10, 11, 12]


def test_data_specs_load_through_the_datasets_cache():
    import datasets

    (part,) = open_parts(LUFFY_PARQUET)
    assert isinstance(part.dataset, datasets.Dataset) and part.dataset.cache_files
    assert (part.where, part.kind, part.stem) == (str(LUFFY_PARQUET), "table", "luffy_sample")
    (part,) = open_parts(MESSAGES)
    assert part.kind == "jsonl" and part.dataset.cache_files
    # rows come back exactly as the direct file reader gives them
    for path in (LUFFY_PARQUET, LUFFY_JSONL, RAW, MESSAGES):
        assert list(iter_rows(path)) == list(iter_file(path))


# ---------------------------------------------------------------------------------------------
# Hub datasets (no network: offline flag, missing package, and a stand-in `datasets` module)


def test_hub_offline_says_local_paths_work(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        read_problems("hub:Elliott/Openr1-Math-46k-8192")
    msg = one_line(err)
    assert "hub:Elliott/Openr1-Math-46k-8192" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "local .jsonl/.json/.parquet files and directories always work" in msg


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match="'datasets' package is not installed.*always work"):
        read_problems("hub:owner/name")


def test_hub_loads_with_datasets(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []
    rows = pq.read_table(LUFFY_PARQUET).to_pylist()

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "owner/missing":
            raise FileNotFoundError("Dataset 'owner/missing' doesn't exist\non the Hub")
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    problems = read_problems("hub:Elliott/Openr1-Math-46k-8192:default", split="train")
    assert calls == [("Elliott/Openr1-Math-46k-8192", "default", "train")]
    assert [p.id for p in problems] == ["10", "11", "12"]
    with pytest.raises(UserError) as err:
        read_problems("hub:owner/missing")
    assert (
        "hub:owner/missing: cannot load split 'train' from the hub (FileNotFoundError"
        in one_line(err)
    )


# ---------------------------------------------------------------------------------------------
# S3 (the session's moto server): the same files, read through s3fs and the datasets cache


def _put(s3_env, files: dict[str, Path]) -> str:
    """Upload `files` ({relative key: local file}) under a fresh prefix; its s3:// URL."""
    import boto3

    prefix = f"test-data/{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3")  # endpoint and keys from the s3_env variables
    for rel, path in files.items():
        client.upload_file(str(path), s3_env.bucket, f"{prefix}/{rel}")
    return f"s3://{s3_env.bucket}/{prefix}"


def test_s3_parquet_and_jsonl_read_like_the_local_files(s3_env, tmp_path):
    from prefix_rft.data.loading import storage_options

    train = write_jsonl(tmp_path / "train-00000.jsonl", [{"problem": "A?", "answer": "1",
                                                          "solution": "S"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"problem": "B?", "answer": "2"}])
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist(raw_rows()), raw)
    url = _put(s3_env, {"luffy.parquet": LUFFY_PARQUET, "luffy.jsonl": LUFFY_JSONL,
                        "dir/train-00000.jsonl": train, "dir/test.jsonl": test, "raw.parquet": raw})
    assert read_problems(f"{url}/luffy.parquet") == read_problems(LUFFY_PARQUET)
    assert read_problems(f"{url}/luffy.jsonl") == read_problems(LUFFY_JSONL)
    first = next(iter_rows(f"{url}/luffy.jsonl"))
    assert (first.where, first.number, first.stem) == (f"{url}/luffy.jsonl", 1, "luffy")
    # a prefix reads like a directory: the files of the split
    assert [p.prompt for p in read_problems(f"{url}/dir/")] == ["A?"]
    assert [p.prompt for p in read_problems(f"{url}/dir", split="test",
                                            require_demos=False)] == ["B?"]
    kw = {"count_tokens": words, "gold_ok": simple_gold_ok, "max_trace_tokens": 20}
    assert filter_openr1_dataset(openr1_parts(f"{url}/raw.parquet"), **kw) == filter_openr1(
        raw_rows(), **kw)
    # the moto endpoint is not AWS: s3fs's client only sends checksums an operation requires
    config = storage_options("s3")["config_kwargs"]
    assert config["request_checksum_calculation"] == "when_required"
    assert storage_options("s3")["endpoint_url"] == s3_env.s3_endpoint


def test_s3_missing_object_or_bucket_is_one_error_naming_the_url(s3_env):
    missing = f"s3://{s3_env.bucket}/test-data/{uuid.uuid4().hex[:8]}/train.parquet"
    with pytest.raises(UserError) as err:
        read_problems(missing)
    assert one_line(err).startswith(f"{missing}: not found (no such object or bucket; endpoint ")
    bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/train.jsonl"
    with pytest.raises(UserError) as err:
        read_problems(bucket)
    assert one_line(err).startswith(f"{bucket}: not found (no such object or bucket; endpoint ")


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming file, row and field, saying what was expected


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError) as err:
        read_problems(missing)
    assert one_line(err).startswith(
        f"{missing}: file not found (expected a .jsonl, .json or .parquet"
    )
    with pytest.raises(UserError, match="for a hub dataset write hub:owner/name"):
        read_problems("owner/name")


def test_unknown_schema():
    with pytest.raises(UserError) as err:
        read_problems(MESSAGES, schema="alpaca")
    assert one_line(err) == (
        f"{MESSAGES}: unknown schema 'alpaca' "
        "(expected one of auto, openr1, luffy, messages, plain, problems)"
    )


def test_undetectable_schema(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hi"}])
    with pytest.raises(UserError) as err:
        read_problems(path)
    assert one_line(err).startswith(f"{path} row 1: cannot tell the schema from the fields (text)")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "P?", "answer": "1", "solution": "S"}\n\n{"problem": "Q?", \n')
    with pytest.raises(UserError) as err:
        read_problems(path)
    msg = one_line(err)
    assert msg.startswith(f"{path} row 3: malformed JSON (")
    assert msg.endswith("(expected one JSON object per line)")


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"problem": "P?", "answer": "1", "solution": "S"}\n[1, 2]\n')
    with pytest.raises(
        UserError, match=r"list\.jsonl row 2: got a JSON list \(expected a JSON object\)"
    ):
        read_problems(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(UserError, match="empty.jsonl: file has no rows"):
        read_problems(path)


def test_row_without_answer(tmp_path):
    rows = [{"problem": "P?", "answer": "1", "solution": "S"}] * 16
    rows.append({"problem": "Q?", "answer": "  ", "solution": "S"})
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError) as err:
        read_problems(path)
    assert one_line(err) == (
        f"{path} row 17: field 'answer' is missing or empty (expected the gold final answer)"
    )


def test_luffy_row_without_ground_truth(tmp_path):
    rows = [json.loads(line) for line in LUFFY_JSONL.read_text().splitlines()]
    del rows[1]["reward_model"]["ground_truth"]
    path = write_jsonl(tmp_path / "luffy.jsonl", rows)
    with pytest.raises(UserError) as err:
        read_problems(path)
    assert one_line(err) == (
        f"{path} row 2: field 'reward_model.ground_truth' is missing or empty "
        "(expected the gold final answer)"
    )


def test_row_without_demonstration(tmp_path):
    rows = [json.loads(line) for line in LUFFY_JSONL.read_text().splitlines()]
    rows[2]["target"] = []
    path = write_jsonl(tmp_path / "luffy.jsonl", rows)
    with pytest.raises(UserError) as err:
        read_problems(path)
    msg = one_line(err)
    assert msg.startswith(f"{path} row 3: field 'target' has no demonstration (expected ")
    assert "require_demos=False" in msg
    assert read_problems(path, require_demos=False)[2].demonstrations == ()


def test_messages_row_without_assistant_turn(tmp_path):
    row = json.loads(MESSAGES.read_text().splitlines()[0])
    row["messages"] = row["messages"][:1]
    path = write_jsonl(tmp_path / "m.jsonl", [row])
    with pytest.raises(UserError, match=r"m\.jsonl row 1: field 'messages' has no demonstration"):
        read_problems(path)
    assert read_problems(path, require_demos=False)[0].answer == "180"


def test_row_without_problem_text(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"answer": "1", "question": None, "solution": "S"}])
    with pytest.raises(UserError) as err:
        read_problems(path, schema="plain")
    assert one_line(err).startswith(f"{path} row 1: field 'problem' is missing or empty (expected")


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(UserError) as err:
        read_problems(path)
    assert one_line(err).startswith(f"{path}: cannot read as Parquet (")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("problem,answer\n")
    with pytest.raises(UserError, match=r"data\.csv: unsupported file type '\.csv'"):
        read_problems(path)


# ---------------------------------------------------------------------------------------------
# LUFFY's OpenR1 filter


def test_filter_counts_each_dropped_row_under_one_rule():
    problems, stats = filter_openr1(
        raw_rows(), count_tokens=words, gold_ok=simple_gold_ok, max_trace_tokens=20
    )
    assert stats.as_dict() == {
        "input_rows": 12,
        "kept": 4,
        "no_correct_trace": 1,  # row 6
        "too_long": 1,  # row 4
        "gold_unparseable": 2,  # rows 5, 9 (9 is also a duplicate: rule 2 comes first)
        "duplicate": 2,  # rows 3, 11 (11 also has no correct trace: rule 3 comes first)
        "missing_fields": 2,  # rows 7, 12
    }
    assert (
        stats.dropped
        == 8
        == sum(v for k, v in stats.as_dict().items() if k not in ("input_rows", "kept"))
    )
    assert isinstance(stats, FilterStats)
    rows = raw_rows()
    assert [p.id for p in problems] == ["u-01", "u-02", "u-08", "u-10"]
    assert problems[0].demonstrations == (rows[0]["generations"][0],)
    assert problems[1].demonstrations == (rows[1]["generations"][1],)  # first correct one
    assert problems[2].demonstrations == (rows[7]["generations"][1],)  # first correct that fits
    assert problems[3].demonstrations == (rows[9]["generations"][0],)
    assert all(len(p.demonstrations) == 1 and p.source == "openr1" for p in problems)
    assert problems[1].prompt == "Find $x$ if $2x = 10$." and problems[1].answer == "5"


def test_filter_docstring_states_the_rule_order():
    doc = filter_openr1.__doc__
    order = ["missing_fields", "gold_unparseable", "duplicate", "no_correct_trace", "too_long"]
    assert [doc.index(name) for name in order] == sorted(doc.index(name) for name in order)


def test_filter_tokenizes_lazily_and_keeps_traces_at_the_limit():
    seen = []

    def count(text):
        seen.append(text)
        return words(text)

    rows = raw_rows()
    filter_openr1(rows[:2], count_tokens=count, gold_ok=simple_gold_ok, max_trace_tokens=20)
    assert seen == [rows[0]["generations"][0], rows[1]["generations"][1]]  # never a wrong one
    longest = words(rows[3]["generations"][0])
    kept, stats = filter_openr1(
        [rows[3]], count_tokens=words, gold_ok=simple_gold_ok, max_trace_tokens=longest
    )
    assert stats.kept == 1 and kept[0].id == "u-04"  # <= max_trace_tokens is kept


def test_filter_ids_fall_back_to_source_and_row():
    rows = raw_rows()[:2]
    del rows[1]["uuid"]
    problems, _ = filter_openr1(
        rows, count_tokens=words, gold_ok=simple_gold_ok, max_trace_tokens=20, source="openr1-mini"
    )
    assert [p.id for p in problems] == ["u-01", "openr1-mini-2"]
    assert {p.source for p in problems} == {"openr1-mini"}


def test_filter_with_math_verify_gold_check():
    from prefix_rft.rollout.reward import gold_is_parseable

    problems, stats = filter_openr1(
        raw_rows(), count_tokens=words, gold_ok=gold_is_parseable, max_trace_tokens=20
    )
    # Math-Verify parses row 5's "proof" (as a product of symbols) but not row 9's "\\text{}"
    assert not gold_is_parseable("\\text{}")
    assert stats.gold_unparseable == 1
    assert stats.kept == 5
    assert [p.id for p in problems] == ["u-01", "u-02", "u-05", "u-08", "u-10"]
    assert stats.dropped == stats.input_rows - 5 == 7


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_dataset_filter_equals_the_row_filter(tmp_path, monkeypatch, suffix):
    """The `datasets.map` filter (2 worker processes) keeps exactly the rows, ids, traces and
    counts of `filter_openr1`, for every row limit, from JSON lines and from Parquet."""
    from prefix_rft.data import filter as filter_mod
    from prefix_rft.rollout.reward import gold_is_parseable

    monkeypatch.setattr(filter_mod, "MIN_ROWS_PER_WORKER", 1)  # use workers on 12 rows
    rows = raw_rows()
    path = RAW
    if suffix == ".parquet":
        path = tmp_path / "raw.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    for gold_ok in (simple_gold_ok, gold_is_parseable):
        for limit in (None, 0, 5, 11):
            kw = {"count_tokens": words, "gold_ok": gold_ok, "max_trace_tokens": 20}
            expected = filter_openr1(rows[:limit] if limit is not None else rows, **kw)
            got = filter_openr1_dataset(openr1_parts(str(path)), num_proc=2, limit=limit, **kw)
            assert got == expected, (gold_ok, limit)
    assert got[1].kept == 5 and got[1].duplicate == 2


def test_filter_source_with_a_real_tokenizer_equals_the_row_filter(smol_tokenizer):
    from prefix_rft.rollout.reward import gold_is_parseable

    def count(text):
        return len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])

    for max_tokens in (8, 40):
        expected = filter_openr1(raw_rows(), count_tokens=count, gold_ok=gold_is_parseable,
                                 max_trace_tokens=max_tokens)
        got = filter_openr1_source(str(RAW), smol_tokenizer, max_trace_tokens=max_tokens,
                                   num_proc=1)
        assert got == expected
    assert filter_openr1_source(str(RAW), smol_tokenizer, max_trace_tokens=40, limit=2)[1].input_rows == 2


def test_in_memory_dataset_keeps_the_rows_and_fingerprints_them_by_content():
    """In-memory datasets (JSON parts, TRL's benchmark rows) get a fingerprint from the rows'
    JSON, not from dill-pickling the table (which failed on the GPU machine): same rows, same
    fingerprint; one changed answer, another; the rows themselves unchanged."""
    rows = [{"prompt": [{"role": "user", "content": "1+1?"}], "answer": "2"},
            {"prompt": [{"role": "user", "content": "2+3?"}], "answer": "5"}]
    ds = in_memory_dataset(rows)
    assert ds.to_list() == rows
    assert in_memory_dataset([dict(r) for r in rows])._fingerprint == ds._fingerprint
    changed = [rows[0], {**rows[1], "answer": "6"}]
    assert in_memory_dataset(changed)._fingerprint != ds._fingerprint
    assert len(ds._fingerprint) == 16


def test_json_parts_are_fingerprinted_by_content(tmp_path):
    """The same JSON lines under two file names are one dataset to `datasets`' cache; one
    changed row makes another."""
    text = RAW.read_text()
    (tmp_path / "a.jsonl").write_text(text)
    (tmp_path / "b.jsonl").write_text(text)
    lines = text.splitlines()
    (tmp_path / "c.jsonl").write_text("\n".join([lines[0].replace('"answer": "7"', '"answer": "8"')] + lines[1:]))
    a, b, c = (openr1_parts(str(tmp_path / f"{n}.jsonl"))[0] for n in "abc")
    assert '"answer": "8"' in (tmp_path / "c.jsonl").read_text()
    assert len(a) == len(lines) == len(c)
    assert a._fingerprint == b._fingerprint != c._fingerprint


def test_dedupe_problems_normalises_whitespace_and_case():
    a = Problem("a", "What is  2 + 2?", "4", ())
    b = Problem("b", "what is 2 +\n2?", "4", ())
    c = Problem("c", "What is 3 + 3?", "6", ())
    assert dedupe_problems([a, b, c, a]) == [a, c]


# ---------------------------------------------------------------------------------------------
# Data fractions (the paper's 1% / 10% runs)


def _many(n: int) -> list[Problem]:
    return [Problem(f"p{i}", f"Problem {i}?", str(i), ()) for i in range(n)]


def test_data_fraction_is_seeded_nested_and_ordered():
    problems = _many(1000)
    for seed in (0, 1, 7):
        one = data_fraction(problems, 0.01, seed)
        ten = data_fraction(problems, 0.1, seed)
        assert len(one) == 10 and len(ten) == 100
        assert {p.id for p in one} <= {p.id for p in ten}
        assert one == data_fraction(problems, 0.01, seed)
        assert ten == sorted(ten, key=lambda p: int(p.id[1:]))  # original order
    assert data_fraction(problems, 0.1, 0) != data_fraction(problems, 0.1, 1)
    assert data_fraction(problems, 1.0, 3) == problems
    assert len(data_fraction(_many(20), 0.01, 0)) == 1  # never empty


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, "0.1"])
def test_data_fraction_rejects_bad_fractions(fraction):
    with pytest.raises(UserError, match=r"expected a number in \(0, 1\]"):
        data_fraction(_many(10), fraction, 0)


# ---------------------------------------------------------------------------------------------
# Synthetic arithmetic


def test_synthetic_is_deterministic_by_seed():
    a = synthetic_arithmetic(30, seed=1)
    assert a == synthetic_arithmetic(30, seed=1)
    assert a != synthetic_arithmetic(30, seed=2)
    assert synthetic_arithmetic(12, seed=1) == a[:12]  # a larger n extends a smaller one
    assert [p.id.split("-")[1] for p in a[:6]] == ["add", "mul", "word"] * 2
    assert len({p.id for p in a}) == 30


@pytest.mark.parametrize("level", LEVELS)
def test_synthetic_splits_are_disjoint(level):
    train = synthetic_arithmetic(pool_size(level, "train"), levels=[level], split="train")
    test = synthetic_arithmetic(pool_size(level, "test"), levels=[level], split="test")
    assert train and test
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len({p.prompt for p in train}) == len(train)


def _tokens(text: str) -> int:
    # a pessimistic stand-in for a BPE tokenizer: one token per word, digit, symbol and newline
    return len(re.findall(r"[A-Za-z]+|\d|[^\w\s]|\n", text))


@pytest.mark.parametrize("level", LEVELS)
def test_synthetic_demonstrations_are_short_correct_and_boxed(level):
    problems = synthetic_arithmetic(pool_size(level, "train"), levels=[level])
    for p in problems:
        (demo,) = p.demonstrations
        assert demo.endswith(f"\nThe answer is \\boxed{{{p.answer}}}.")
        assert _tokens(demo) < 40, demo
        assert p.id.startswith(f"synth-{level}-") and p.source == "synthetic"
        expr = p.id.split("-", 2)[2].replace("x", "*")
        assert eval(expr) == int(p.answer)  # noqa: S307 - digits and + - * only
        assert p.prompt.endswith("?")


def test_synthetic_examples_read_naturally():
    adds = {p.id: p for p in synthetic_arithmetic(pool_size("add"), levels=["add"])}
    adds.update(
        {
            p.id: p
            for p in synthetic_arithmetic(pool_size("add", "test"), levels=["add"], split="test")
        }
    )
    p = adds["synth-add-7+5"]
    assert p.prompt == "What is 7 + 5?" and p.answer == "12"
    assert p.demonstrations == ("We add 7 and 5.\n7 + 5 = 12.\nThe answer is \\boxed{12}.",)


def test_synthetic_tiny_is_a_fixed_small_set():
    assert pool_size("tiny", "train") + pool_size("tiny", "test") == 25
    tiny = synthetic_arithmetic(pool_size("tiny"), levels=["tiny"])
    assert {p.prompt for p in tiny} <= {f"What is {a} + {b}?" for a in range(5) for b in range(5)}
    with pytest.raises(UserError, match="synthetic level 'tiny' has 18 train problems"):
        synthetic_arithmetic(100, levels=["tiny"])


def test_synthetic_bad_arguments():
    with pytest.raises(UserError, match="synthetic level 'algebra' is unknown"):
        synthetic_arithmetic(3, levels=["algebra"])
    with pytest.raises(UserError, match="synthetic split 'dev' is unknown"):
        synthetic_arithmetic(3, split="dev")
    with pytest.raises(UserError, match="n=-1"):
        synthetic_arithmetic(-1)
