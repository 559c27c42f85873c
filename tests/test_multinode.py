"""Training on several nodes: `pipeline.train.nodes`, torchrun across nodes, the multi-node flow.

* the pieces, without Metaflow: the node count's checks, torchrun's arguments per node, the
  rendezvous port, the shared-store check;
* the equivalence: `steps.train.train_epoch` on 2 "nodes" of 1 process each (two torchrun
  launches with --nnodes 2 on this machine, gloo) equals the same epoch in one process: same
  weights and metrics to the tolerances of tests/test_distributed.py, every metric logged once
  (global rank 0 = node 0 alone logs and commits);
* slow: flows/prefix_rft_multinode_flow.py run by Metaflow with 2 local @parallel nodes equals the
  single-node flow's shared run (conftest.py's `happy_flow`): same checkpoints epoch by epoch.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from prefix_rft.errors import UserError
from steps.flow_config import nodes_problem, resolve_flow
from steps.train import (
    PORTS,
    Rendezvous,
    check_shared_store,
    gang_size,
    rendezvous_port,
    torchrun_args,
)
from tests.test_distributed import EXPERIMENT, SKIP_METRICS, _weights, prepare_epoch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BASE = {"method": "prefix_rft", "model": {"name_or_path": "m"}, "data": {"train": "synthetic:tiny"}}


# ============================================================================ the pieces
def test_nodes_key_range_and_world():
    assert resolve_flow(BASE).pipeline.train.nodes == 1
    for bad in (0, 65):
        with pytest.raises(UserError, match=r"key 'pipeline.train.nodes': .* must be >= 1 and <= 64"):
            resolve_flow({**BASE, "pipeline": {"train": {"nodes": bad}}})
    # batch sizes split over processes x nodes: 2 nodes x 2 processes x 1 minibatch -> 4
    cfg = {**BASE, "rollout": {"num_prompts": 6}, "rl": {"num_minibatches": 1},
           "pipeline": {"train": {"nodes": 2}, "train_processes": 2}}
    with pytest.raises(UserError, match=r"rollout.num_prompts=6 must be a multiple of 4 "
                       r"\(processes 4 x"):
        resolve_flow(cfg)
    cfg["rollout"]["num_prompts"] = 8
    assert resolve_flow(cfg).pipeline.world_size() == 4


def test_each_flow_takes_its_node_counts():
    assert nodes_problem({}, multi_node_flow=False) is None
    assert nodes_problem({"train": {"nodes": 2}}, multi_node_flow=True) is None
    assert "prefix_rft_multinode_flow.py" in nodes_problem({"train": {"nodes": 2}}, False)
    assert "prefix_rft_flow.py" in nodes_problem({"train": {"nodes": 1}}, True)
    for bad in (0, 65, "2", 2.0, True):
        assert "out of range" in nodes_problem({"train": {"nodes": bad}}, True), bad
    assert gang_size(resolve_flow({**BASE, "pipeline": {"train": {"nodes": 4}}})) == 4
    with pytest.raises(UserError, match="pipeline.train.nodes"):
        gang_size(resolve_flow(BASE))


def test_torchrun_arguments_per_node():
    assert torchrun_args(4) == ["--standalone", "--nproc_per_node=4"]
    assert torchrun_args(2, Rendezvous("10.0.0.5", 1, 0)) == ["--standalone", "--nproc_per_node=2"]
    assert torchrun_args(8, Rendezvous("10.0.0.5", 3, 2, port=31000)) == [
        "--nnodes=3", "--node_rank=2", "--master_addr=10.0.0.5", "--master_port=31000",
        "--nproc_per_node=8"]
    with pytest.raises(ValueError):
        Rendezvous("10.0.0.5", 2, 2)
    with pytest.raises(ValueError):
        torchrun_args(0)


def test_rendezvous_port_is_shared_and_moves_per_epoch():
    ports = {rendezvous_port("1234", e) for e in range(1, 6)}
    assert len(ports) == 5 and all(PORTS[0] <= p < PORTS[1] for p in ports)
    assert rendezvous_port("1234", 1) == rendezvous_port("1234", 1)  # every node computes it
    assert rendezvous_port("1234", 1) != rendezvous_port("1235", 1)


def test_nodes_on_several_machines_need_a_shared_store():
    local = resolve_flow({**BASE, "pipeline": {"checkpoint_root": "/tmp/ckpt"}})
    s3 = resolve_flow({**BASE, "pipeline": {"checkpoint_root": "s3://b/ckpt"}})
    check_shared_store(local, Rendezvous("127.0.0.1", 2, 1))  # Metaflow's local @parallel
    check_shared_store(s3, Rendezvous("job-control-0-0.job.ns.svc.cluster.local", 2, 1))
    with pytest.raises(UserError, match=r"key 'pipeline.checkpoint_root': '/tmp/ckpt' is a local"):
        check_shared_store(local, Rendezvous("job-control-0-0.job.ns.svc.cluster.local", 2, 1))
    with pytest.raises(UserError, match="pipeline.checkpoint_root"):
        check_shared_store(local, Rendezvous("10.1.2.3", 4, 0))


# ============================================================================ 2 nodes = 1 process
def _prepare(model_dir, root: Path, mlflow_uri: str, run_id: str, nodes: int):
    return prepare_epoch(model_dir, root, mlflow_uri, run_id, "NodesFlow",
                         **{"pipeline.train.nodes": nodes})


def _on_nodes(cfg, kw: dict, nodes: int) -> list[dict]:
    """train_epoch on `nodes` local "nodes" at once, as the nodes of a @parallel task call it."""
    from steps import train as strain

    port = rendezvous_port(kw["ctx"].run_id, kw["epoch"])
    out: list = [None] * nodes

    def node(i):
        try:
            out[i] = strain.train_epoch(cfg, nodes=Rendezvous("127.0.0.1", nodes, i, port), **kw)
        except BaseException as e:  # noqa: BLE001 - reported below
            out[i] = e

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    errors = [r for r in out if not isinstance(r, dict)]
    assert not errors, errors
    return out


@pytest.fixture(scope="module")
def node_runs(smollm2_dir, tmp_path_factory):
    from prefix_rft.io.tracking import Tracker
    from steps import train as strain

    root = tmp_path_factory.mktemp("nodes")
    uri = f"sqlite:///{root}/mlflow.db"
    Tracker(uri).client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    cfg1, run1, tracker, kw = _prepare(smollm2_dir, root / "one", uri, "1", 1)
    one = strain.train_epoch(cfg1, tracker=tracker, **kw)
    cfg2, run2, _, kw = _prepare(smollm2_dir, root / "two", uri, "2", 2)
    two = _on_nodes(cfg2, kw, 2)
    return uri, (run1, one), (run2, two)


def test_two_nodes_update_equals_one_process(node_runs, smollm2_dir):
    _, (_, one), (_, (n0, n1)) = node_runs
    assert n0 == n1  # every node returns global rank 0's result
    assert one["steps"] == n0["steps"] == [0, 1]
    assert n0["checkpoint"]["meta"]["task_id"] == "1"
    w1, w2 = _weights(one["checkpoint"]), _weights(n0["checkpoint"])
    assert set(w1) == set(w2)
    for k in w1:  # the tolerance of the 2-process test (see there)
        assert float((w2[k] - w1[k]).norm()) <= 1e-5 * float(w1[k].norm()), k


def test_two_nodes_log_the_same_metrics_once(node_runs):
    from mlflow import MlflowClient

    uri, (run1, one), (run2, (n0, _)) = node_runs
    client = MlflowClient(uri)
    m1, m2 = client.get_run(run1).data.metrics, client.get_run(run2).data.metrics
    keys = {k for k in m1 if not k.startswith(SKIP_METRICS)}
    assert {"loss", "grad_norm", "reward/mean"} <= keys
    assert keys == {k for k in m2 if not k.startswith(SKIP_METRICS)}
    for k in keys:
        history = client.get_metric_history(run2, k)
        assert len(history) == 1, f"{k} logged {len(history)} times"  # node 0, rank 0 only
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
    assert m1["grad_norm"] > 0
    assert n0["last_metrics"]["loss"] == pytest.approx(one["last_metrics"]["loss"], rel=1e-5)


# ============================================================================ the flow (slow)
MULTINODE_FLOW = str(Path(__file__).resolve().parents[1] / "flows" / "prefix_rft_multinode_flow.py")


@pytest.mark.slow
def test_multinode_flow_on_two_local_nodes_equals_the_single_node_flow(
        happy_flow, local_servers, smollm2_dir, tmp_path):
    """The happy run's tiny config with `pipeline.train.nodes: 2`: Metaflow runs train_nodes as 2
    local processes (node 0 and node 1), each launching torchrun --nnodes 2; both epochs'
    checkpoints equal the single-node flow's."""
    from metaflow import Runner, namespace

    from tests import flow_runs

    assert happy_flow["status"] == "successful", happy_flow["out"][-3000:]
    cfg = flow_runs.tiny_config(smollm2_dir, tmp_path, experiment=flow_runs.EXPERIMENT,
                                **{"pipeline.train.nodes": 2, "pipeline.eval_base": False,
                                   "pipeline.eval_epochs": "last",
                                   # its own registry name: the happy run's 'best' alias stays
                                   # that run's for tests/test_pipeline.py
                                   "tracking.registered_model": "prefix-rft-multinode-test"})
    # Metaflow starts the other node's task with the `python` first on PATH
    env = flow_runs.flow_env(local_servers, tmp_path, PATH=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    with Runner(MULTINODE_FLOW, show_output=False, env=env, cwd=str(tmp_path),
                config=[("config", str(cfg["path"]))]) as runner:
        result = runner.run()
        out = result.stdout + result.stderr
        assert result.status == "successful", out[-4000:]
        run = result.run
    namespace(None)
    (join,) = list(run["train_join"])
    nodes = sorted(t.data.node_index for t in run["train_nodes"])
    assert nodes == [0, 1]
    multi = join.data.epochs_done
    single = sorted((t.data.epoch_result for t in happy_flow["run"]["train_epoch"]),
                    key=lambda m: m["epoch"])
    assert [m["epoch"] for m in multi] == [1, 2]
    for a, b in zip(single, multi):
        assert a["steps"] == b["steps"]
        wa, wb = _weights(a["checkpoint"]), _weights(b["checkpoint"])
        for k in wa:
            assert float((wb[k] - wa[k]).norm()) <= 1e-5 * max(float(wa[k].norm()), 1e-12), k
    assert "--nnodes=2 --node_rank=0" in out
