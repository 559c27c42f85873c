"""The Prefix-RFT pipeline with training spread over several nodes (`pipeline.train.nodes` > 1).

    start -> filter_data -> train_launch -> train_nodes (@parallel: nodes tasks, every epoch)
          -> train_join -> plan_eval -> eval_task (foreach) -> join_eval -> end

The single-node flow (prefix_rft_flow.py) with its training loop replaced; every other step is
inherited unchanged. Metaflow starts `train_nodes` as a gang of `pipeline.train.nodes` tasks
(Kubernetes: a JobSet; AWS Batch: a multi-node job; a local run: processes on this machine) and
tells each its place in `current.parallel`; each node runs `steps.train.train_epochs`, which
launches torchrun across the nodes for each epoch. Global rank 0 (node 0) alone logs to MLflow
and commits checkpoints; every node returns the same results and `train_join` keeps node 0's.

Why one task trains every epoch (not one per epoch as in the single-node flow): Metaflow enters a
@parallel step only through `self.next(..., num_parallel=N)` and leaves it only into a join, and
its graph checks allow no loop other than a step that loops to itself; so the epochs cannot loop
through the gang. A retried or resumed gang continues from the checkpoints already committed.
@timeout is therefore `pipeline.train.timeout_minutes` x `pipeline.epochs`; the other
`pipeline.train` resources are per node.

    python flows/prefix_rft_multinode_flow.py --config config FILE run        # nodes: 2 or more
    python flows/prefix_rft_multinode_flow.py --config config FILE argo-workflows create

A local run starts the nodes' tasks with the `python` first on PATH (Metaflow's choice), so run
it from the project's activated environment.
"""

from __future__ import annotations

from metaflow import config_expr, current, parallel, resources, retry, step, timeout
from prefix_rft_flow import PrefixRFTFlow, _ctx  # this directory (in the code package)


class PrefixRFTMultiNodeFlow(PrefixRFTFlow):
    """Train a policy on several nodes (Metaflow @parallel + torchrun), checkpoint every epoch,
    evaluate every checkpoint, and log it all to MLflow."""

    train_epoch = None  # the single-node training loop: not a step of this flow

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def filter_data(self):
        """Filter the raw data into this lineage's training/held-out sets; plan the epochs."""
        self._filter_data()
        self.next(self.train_launch)

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def train_launch(self):
        """Start the training gang: one train_nodes task per node."""
        from steps.common import config_from_dict
        from steps.train import gang_size

        self.nodes = gang_size(config_from_dict(self.cfg))
        self.next(self.train_nodes, num_parallel=self.nodes)

    @retry(times=config_expr("config.pipeline.train_retries"))
    @timeout(minutes=config_expr(
        "config.pipeline.train.timeout_minutes * config.pipeline.epochs"))
    @resources(cpu=config_expr("config.pipeline.train.cpus"),
               gpu=config_expr("config.pipeline.train.gpus"),
               memory=config_expr("config.pipeline.train.memory_mb"),
               shared_memory=config_expr("config.pipeline.shared_memory_mb"))
    @parallel
    @step
    def train_nodes(self):
        """Every epoch on this node, in step with the other nodes (node 0 logs and commits)."""
        from steps.common import config_from_dict, interactive
        from steps.train import Rendezvous, train_epochs

        p = current.parallel
        self.node_index = p.node_index
        with self._user_errors_not_retried():
            cfg = self._open()[0] if p.node_index == 0 else config_from_dict(self.cfg)
            self.epochs_done = train_epochs(
                cfg, plan=self.plan, data_ref=self.data_ref, warm_start=self.warm_start_ref,
                lineage_prefix=self.lineage_prefix, ctx=_ctx(), tracking=self.tracking,
                nodes=Rendezvous(p.main_ip, p.num_nodes, p.node_index), progress=interactive())
        self.next(self.train_join)

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def train_join(self, inputs):
        """Node 0's results: every epoch's checkpoint, for evaluation."""
        first = next(i for i in inputs if i.node_index == 0)
        self.merge_artifacts(inputs, exclude=["node_index", "epochs_done"])
        self.epochs_done = first.epochs_done
        self.epoch_result = self.epochs_done[-1]
        self.trained_epoch = self.epoch_result["epoch"]
        self.checkpoint = self.epoch_result["checkpoint"]
        self.epoch = self.trained_epoch + 1
        self.next(self.plan_eval)


if __name__ == "__main__":
    PrefixRFTMultiNodeFlow()
