"""filter_data: the configured raw data -> the training and held-out sets this lineage trains on.

Raw OpenR1-Math-220k rows (`data.schema: openr1`, or detected) go through LUFFY's filter
(`prefix_rft.data.filter_openr1`: first Math-Verify-correct trace of at most
`rollout.max_response_len` policy tokens, parseable gold, no duplicates: ~46k of 220k); any other
source is read as is. Then `data.fraction` and `data.max_problems` apply. Both sets are written as
parquet into the lineage's `data/` directory (committed with a manifest, so every later task reads
exactly these bytes) and the step returns a small manifest: counts, filter stats, the data ref and
the epoch plan (steps per epoch), which needs the number of training problems.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from prefix_rft.data import save_problems
from prefix_rft.data.filter import data_fraction, filter_openr1_source
from prefix_rft.data.problem import Problem
from prefix_rft.data.readers import detect_schema, iter_rows, load_problems
from prefix_rft.data.sources import is_builtin_spec, test_problems, training_problems
from prefix_rft.errors import UserError
from prefix_rft.io import run_layout
from prefix_rft.io.store import CheckpointRef, fetch_checkpoint, open_store
from steps.common import log
from steps.flow_config import FlowConfig

TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"


def _is_raw_openr1(cfg: FlowConfig) -> bool:
    if cfg.data.schema == "openr1":
        return True
    if cfg.data.schema != "auto" or is_builtin_spec(cfg.data.train):
        return False
    for row in iter_rows(cfg.data.train, split="train"):
        return detect_schema(row.fields) == "openr1"
    return False


def load_training_set(cfg: FlowConfig) -> tuple[list[Problem], dict]:
    """The training problems after filtering, fraction and max_problems; plus stats."""
    if not _is_raw_openr1(cfg):
        problems = training_problems(cfg.data, seed=cfg.seed, require_demos=cfg.needs_demos())
        return problems, {"input_rows": len(problems), "kept": len(problems)}
    from prefix_rft.models import load_tokenizer

    tok = load_tokenizer(cfg.model.name_or_path, chat_template=cfg.model.chat_template)
    problems, stats = filter_openr1_source(cfg.data.train, tok,
                                           max_trace_tokens=cfg.rollout.max_response_len)
    if cfg.data.fraction < 1.0:
        problems = data_fraction(problems, cfg.data.fraction, cfg.data.fraction_seed)
    if cfg.data.max_problems is not None:
        problems = problems[: cfg.data.max_problems]
    return problems, stats.as_dict()


def epoch_plan(cfg: FlowConfig, num_train: int) -> dict:
    """How the method's training steps split into pipeline epochs."""
    sft = cfg.sft.steps(num_train)
    total = sft + cfg.rl.steps
    epochs = cfg.pipeline.epochs
    per = cfg.pipeline.steps_per_epoch or int(math.ceil(total / epochs))
    if total < 1:
        raise UserError("the method has no training steps (rl.steps = 0 and sft.epochs = 0)")
    if (epochs - 1) * per >= total:
        raise UserError(
            f"key 'pipeline.epochs': {epochs} epochs of {per} steps leave epoch {epochs} without "
            f"training steps (the method has {total}: {sft} SFT + {cfg.rl.steps} RL); use fewer "
            "epochs or fewer steps_per_epoch")
    return {"epochs": epochs, "steps_per_epoch": per, "total_steps": min(total, epochs * per),
            "sft_steps": sft, "rl_steps": cfg.rl.steps}


def filter_data(cfg: FlowConfig, *, lineage_prefix: str, tracker=None, tracking: dict | None = None) -> dict:
    train, stats = load_training_set(cfg)
    if not train:
        raise UserError(f"data.train={cfg.data.train!r}: no training problems left after filtering "
                        f"({stats})")
    test = test_problems(cfg.data, seed=cfg.seed)
    plan = epoch_plan(cfg, len(train))
    with tempfile.TemporaryDirectory(prefix="prefix-rft-data-") as tmp:
        save_problems(train, Path(tmp) / TRAIN_FILE)
        save_problems(test, Path(tmp) / TEST_FILE)
        files = {f: _file_info(Path(tmp) / f) for f in (TRAIN_FILE, TEST_FILE)}
        ref = open_store(lineage_prefix).commit(
            tmp, "data", step=0, epoch=None, config_hash=cfg.config_hash(),
            meta={"kind": "data", "num_train": len(train), "num_test": len(test)})
    log.info("data: %d training problems, %d held-out -> %s", len(train), len(test), ref.uri)
    if tracker is not None and tracking:
        run_id = tracking["run_id"]
        tracker.log_metrics(run_id, {run_layout.data_metric(k): v for k, v in stats.items()}
                            | {run_layout.data_metric("num_train"): len(train),
                               run_layout.data_metric("num_test"): len(test)}, step=0)
        tracker.set_tags(run_id, {run_layout.DATA_URI_TAG: ref.uri})
        tracker.log_table(run_id, [
            {"id": p.id, "prompt": p.prompt[:500], "answer": p.answer,
             "demo_chars": len(p.demonstrations[0]) if p.demonstrations else 0}
            for p in train[:20]], run_layout.DATA_SAMPLE_ARTIFACT)
        log_datasets(cfg, tracker, run_id, ref.uri, files)
    return {"data": ref.to_dict(), "stats": stats, "num_train": len(train), "num_test": len(test),
            "plan": plan}


def _file_info(path: Path) -> dict:
    """sha256, row count and column types (arrow type strings) of a parquet file."""
    import pyarrow.parquet as pq

    from prefix_rft.io.store import sha256_file

    meta = pq.ParquetFile(path)
    return {"sha256": sha256_file(path), "num_rows": meta.metadata.num_rows,
            "columns": {f.name: str(f.type) for f in meta.schema_arrow}}


def log_datasets(cfg: FlowConfig, tracker, run_id: str, data_uri: str, files: dict) -> None:
    """The committed training and held-out files as dataset inputs of the MLflow run (source:
    their URI in the lineage's data commit; digest: their sha256; the configured raw source as
    a tag). An empty held-out set is not logged."""
    sets = [(TRAIN_FILE, run_layout.TRAIN_DATASET, run_layout.TRAIN_CONTEXT, cfg.data.train),
            (TEST_FILE, run_layout.HELDOUT_DATASET, run_layout.HELDOUT_CONTEXT, cfg.data.test)]
    for file, name, context, raw in sets:
        info = files[file]
        if info["num_rows"]:
            tracker.log_dataset(run_id, name=name, source=f"{data_uri}/{file}", context=context,
                                sha256=info["sha256"], num_rows=info["num_rows"],
                                columns=info["columns"], tags={"raw_source": raw})


def read_data(data_ref: dict) -> tuple[list[Problem], list[Problem]]:
    """The (train, test) sets of a `filter_data` manifest, hash-verified. The test set is empty
    when the config has no `data.test` (its file then has no rows)."""
    import pyarrow.parquet as pq

    local = fetch_checkpoint(CheckpointRef.from_dict(data_ref))
    test_file = local / TEST_FILE
    test = load_problems(test_file) if pq.ParquetFile(test_file).metadata.num_rows else []
    return load_problems(local / TRAIN_FILE), test
