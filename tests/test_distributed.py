"""Data-parallel training on real processes (gloo, CPU): the algorithm must not depend on the
number of GPUs (docs/ALGORITHM.md), so two processes must give what one process gives on the whole
batch.

* the collectives of prefix_rft/train/distributed.py on 2 spawned ranks, with hand-worked values;
* the acceptance test: the pipeline's train_epoch step with `pipeline.train_processes: 2` (it
  launches itself under torchrun; FSDP2-sharded policy, gloo) against the same step in one
  process: a Prefix-RFT step (a prefixed member per group, top-20% entropy selection of demo
  tokens, Dr. GRPO normaliser) with one optimizer step. Parameters, gradient norm, loss and every
  other metric agree to 1e-5, and rank 0 alone logs: every MLflow metric has one value. Both
  with padded and with packed training passes (`model.packing`; on sharded parameters the
  packed pass goes through the model's own head).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prefix_rft.errors import UserError
from prefix_rft.train import distributed as D
from steps.flow_config import resolve_flow
from tests import pipeline_configs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ============================================================================ collectives
def _worker(rank: int, size: int, init: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        res = {
            "owned": D.owned(list(range(6))),
            # rank 0 sends 2 rows, rank 1 sends 1 row of different lengths
            "rows": D.gather_rows([torch.tensor([1.0, 2.0]), torch.tensor([3.0])] if rank == 0
                                  else [torch.tensor([4.0, 5.0, 6.0])]),
            "int": D.all_reduce_sum(3 + rank),  # 3 + 4
            "float": D.all_reduce_sum(0.25 * (rank + 1)),  # 0.25 + 0.5
            "tensor": D.all_reduce_sum(torch.tensor([1.0, rank * 10.0])),
            "main": D.is_main(),
        }
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_collectives_on_two_ranks(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["owned"] == [0, 1, 2] and r1["owned"] == [3, 4, 5]
    for r in (r0, r1):  # rank 0's rows first, then rank 1's, lengths kept
        assert [x.tolist() for x in r["rows"]] == [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]]
        assert r["int"] == 7 and isinstance(r["int"], int)
        assert r["float"] == 0.75
        assert r["tensor"].tolist() == [2.0, 10.0]
    assert r0["main"] and not r1["main"]


def test_single_process_is_the_identity():
    assert D.world() == (0, 1)
    assert D.owned([1, 2, 3]) == [1, 2, 3]
    assert D.gather_rows(["a", "b"]) == ["a", "b"]
    assert D.all_reduce_sum(4) == 4 and D.all_reduce_sum(2.5) == 2.5
    model = torch.nn.Linear(2, 2)
    assert D.shard(model) is model
    with D.unsharded(model):
        pass


def test_uneven_batches_are_refused_naming_the_keys():
    base = {"method": "prefix_rft", "model": {"name_or_path": "m"}, "data": {"train": "synthetic:tiny"},
            "rollout": {"num_prompts": 6}, "rl": {"num_minibatches": 2},
            "pipeline": {"train_processes": 2}}
    with pytest.raises(UserError, match=r"rollout.num_prompts=6 must be a multiple of 4"):
        resolve_flow(base)
    base["rollout"]["num_prompts"] = 8
    assert resolve_flow(base).pipeline.processes() == 2
    sft = {"method": "sft", "model": {"name_or_path": "m"}, "data": {"train": "synthetic:tiny"},
           "sft": {"batch_size": 5}, "pipeline": {"train": {"gpus": 2}}}
    with pytest.raises(UserError, match=r"sft.batch_size=5 must be a multiple of 2"):
        resolve_flow(sft)
    with pytest.raises(UserError, match="pipeline.train_processes"):
        resolve_flow({**base, "pipeline": {"train_processes": 0}})


# ============================================================================ train_epoch
EXPERIMENT = "distributed-tests"
# Prefix-RFT, 4 groups of 4 (2 policy + 1 prefixed + the full demonstration, in the group so the
# random-weight policy's groups have a correct member and non-zero advantages), 1 optimizer step,
# a learning rate large enough that the update is far above float noise.
STEP = {"rollout.num_prompts": 4, "rollout.group_size": 4, "rollout.max_response_len": 32,
        "rollout.n_full_demo": 1, "rollout.demo_in_group": True,
        "rl.steps": 1, "rl.num_minibatches": 1, "rl.micro_batch_size": 3,
        "rl.optim.lr": 1e-3, "rl.optim.warmup_ratio": 0.0, "rl.demo_nll_prompts": 2,
        "pipeline.epochs": 1, "pipeline.eval_base": False, "save_every": 0}
SKIP_METRICS = ("time/", "tokens/per_second", "system/", "data/")  # timings; the data step's


def prepare_epoch(model_dir, root: Path, mlflow_uri: str, run_id: str, flow_name: str,
                  **overrides) -> tuple:
    """`start` and `filter_data` of the tiny STEP config (with `overrides`) against the given
    tracking server: (config, MLflow run id, tracker, the keyword arguments of train_epoch for
    epoch 1)."""
    from steps import data as sdata
    from steps import start as sstart
    from steps.common import RunContext, config_from_dict, tracker_for

    cfg_data = pipeline_configs.tiny_config(model_dir, root, experiment=EXPERIMENT,
                                            **{**STEP, **overrides})
    cfg_data["tracking"].update({"uri": mlflow_uri, "system_metrics": False})
    ctx = RunContext(flow_name=flow_name, run_id=run_id, user="tester", task_id="1")
    m = sstart.start(cfg_data, ctx)
    cfg = config_from_dict(m["config"])
    tracker = tracker_for(m["tracking"])
    d = sdata.filter_data(cfg, lineage_prefix=m["lineage_prefix"], tracker=tracker,
                          tracking=m["tracking"])
    kw = dict(epoch=1, plan=d["plan"], data_ref=d["data"], start_ref=None, warm_start=None,
              lineage_prefix=m["lineage_prefix"], ctx=ctx, tracking=m["tracking"],
              progress=False)
    return cfg, m["tracking"]["run_id"], tracker, kw


def _run_epoch(model_dir, root: Path, mlflow_uri: str, processes: int, run_id: str, packing: str):
    from steps import train as strain

    cfg, mlflow_run, tracker, kw = prepare_epoch(
        model_dir, root, mlflow_uri, run_id, "DistFlow",
        **{"pipeline.train_processes": processes, "model.packing": packing})
    return cfg, mlflow_run, strain.train_epoch(cfg, tracker=tracker, **kw)


def _weights(ref: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from prefix_rft.io.store import CheckpointRef, fetch_checkpoint

    path = fetch_checkpoint(CheckpointRef.from_dict(ref))
    out = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module", params=["off", "on"], ids=["padded", "packed"])
def two_runs(smollm2_dir, tmp_path_factory, request):
    from prefix_rft.io.tracking import Tracker

    root = tmp_path_factory.mktemp("dist")
    uri = f"sqlite:///{root}/mlflow.db"
    Tracker(uri).client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    one = _run_epoch(smollm2_dir, root / "one", uri, 1, "1", request.param)
    two = _run_epoch(smollm2_dir, root / "two", uri, 2, "2", request.param)
    assert one[0].model.packing == request.param
    return uri, one, two


def test_two_processes_update_equals_one_process(two_runs, smollm2_dir):
    from prefix_rft import models

    _, (cfg, _, e1), (_, _, e2) = two_runs
    assert e1["steps"] == e2["steps"] == [0, 1]
    w1, w2 = _weights(e1["checkpoint"]), _weights(e2["checkpoint"])
    tok = models.load_tokenizer(str(smollm2_dir))
    start = models.tiny_random_model(len(tok), **dict(cfg.model.random_init)).state_dict()
    assert set(w1) == set(w2)
    # Per tensor, in norm: Adam's first step is lr * g / (|g| + eps), so the few weights whose
    # gradient is ~eps move by a float-rounding-sensitive amount (two partial sums vs one sum:
    # up to ~2e-6 here, against a step of 1e-3). The weights agree to 1e-5 relative and the
    # update itself to 1e-3 relative; a halved or a per-rank-normalised gradient is far off both.
    for k in w1:
        d1, d2 = w1[k] - start[k], w2[k] - start[k]
        assert float((w2[k] - w1[k]).norm()) <= 1e-5 * float(w1[k].norm()), k
        assert float((d2 - d1).norm()) <= 1e-3 * float(d1.norm()), k
    # Adam's first step moves each weight with a gradient by ~lr = 1e-3
    moved = sum(int(((w1[k] - start[k]).abs() > 5e-4).sum()) for k in w1)
    assert moved > 0.5 * sum(v.numel() for v in w1.values())


def test_two_processes_log_the_same_metrics_once(two_runs):
    from mlflow import MlflowClient

    uri, (_, run1, e1), (_, run2, e2) = two_runs
    client = MlflowClient(uri)
    m1, m2 = client.get_run(run1).data.metrics, client.get_run(run2).data.metrics
    keys = {k for k in m1 if not k.startswith(SKIP_METRICS)}
    assert {"loss", "grad_norm", "reward/mean", "entropy/kept_fraction", "tokens/trained",
            "demo/nll", "prefix/ratio_mean"} <= keys
    assert keys == {k for k in m2 if not k.startswith(SKIP_METRICS)}
    for k in keys:
        history = client.get_metric_history(run2, k)
        assert len(history) == 1, f"{k} logged {len(history)} times"  # rank 0 only
        assert history[0].step == 1
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
    # the step really trained: a non-zero gradient and 20% of the demo tokens kept
    assert m1["grad_norm"] > 0 and 0 < m1["entropy/kept_fraction"] < 1
    assert e2["last_metrics"]["loss"] == pytest.approx(e1["last_metrics"]["loss"], rel=1e-5)


def test_a_two_process_checkpoint_resumes_in_one_process(two_runs, tmp_path):
    """Full weights + name-keyed optimizer state: the 2-GPU checkpoint is an ordinary one."""
    from prefix_rft.io.store import CheckpointRef, fetch_checkpoint
    from prefix_rft.train.trainer import Trainer

    _, (cfg, _, _), (_, _, e2) = two_runs
    path = fetch_checkpoint(CheckpointRef.from_dict(e2["checkpoint"]))
    tr = Trainer(cfg, progress=False)
    tr.load(path)
    assert tr.state.global_step == 1 and tr.state.optimizer_steps == 1
    w = _weights(e2["checkpoint"])
    sd = tr.model.state_dict()
    assert all(torch.equal(sd[k], w[k]) for k in w)
    # Adam moments came back for the parameters (keyed by name in the file)
    assert len(tr.opt.state) == len([p for p in tr.model.parameters() if p.requires_grad])
    assert all(int(s["step"]) == 1 for s in tr.opt.state.values())
    tr.close()


# ============================================================================ weight-synced engines
def _full_sums(model) -> dict[str, float]:
    from prefix_rft.rollout.engines.weight_sync import policy_weights

    return {n: float(t.double().sum()) for n, t in policy_weights(model)}  # collective


def _copy_engine_worker(rank: int, size: int, init: str, out_dir: str, model_dir: str) -> None:
    """One RL step with a weight-synced engine (tests/copy_engine.py) on `size` gloo ranks."""
    from prefix_rft.models import load_tokenizer
    from tests.copy_engine import COPY, copy_engine
    from tests.test_trainer import _cfg, _trainer

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        with copy_engine() as built:
            cfg = _cfg(rollout={"engine": COPY}, rl={"steps": 1, "optim": {"warmup_ratio": 0.0}})
            tr = _trainer(cfg, load_tokenizer(model_dir))
            before = _full_sums(tr.model)
            m = tr.rl_step()
            after = _full_sums(tr.model)
            (engine,) = built
            numbers = {k: v for k, v in m.items() if isinstance(v, (int, float))
                       and not k.startswith(("time/", "tokens/per_second"))}
            torch.save({"pushes": engine.pushes, "released": engine.released, "before": before,
                        "after": after, "metrics": numbers}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _copy_engine_run(tmp_path: Path, size: int, model_dir: Path) -> list[dict]:
    out = tmp_path / f"world{size}"
    out.mkdir()
    init = f"file://{out / 'rendezvous'}"
    mp.spawn(_copy_engine_worker, args=(size, init, str(out), str(model_dir)), nprocs=size,
             join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(size)]


def test_weight_synced_engine_on_two_processes_equals_one(tmp_path, smollm2_dir):
    """Under FSDP2 every rank's engine receives the whole, current policy before its rollouts
    (nothing sharded, nothing stale), and the step equals the single-process step."""
    (one,) = _copy_engine_run(tmp_path, 1, smollm2_dir)
    two = _copy_engine_run(tmp_path, 2, smollm2_dir)
    for r in (one, *two):
        (push,) = r["pushes"]
        assert r["released"] == 1
        assert push.keys() == r["before"].keys()
        assert all(push[k] == pytest.approx(r["before"][k], rel=1e-6, abs=1e-9) for k in push)
    assert two[0]["before"] == two[1]["before"] == pytest.approx(one["before"])
    for k, v in one["after"].items():  # same update (float rounding of split sums aside)
        assert two[0]["after"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    m1, m2 = one["metrics"], two[0]["metrics"]
    assert m2 == two[1]["metrics"]
    for k in ("reward/mean", "loss", "rollout/logprob_gap_tokens", "grad_norm"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
    assert m1["rollout/logprob_gap_mean"] < 1e-4 and m2["rollout/logprob_gap_mean"] < 1e-4
