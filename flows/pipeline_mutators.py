"""Flow mutators of the pipeline flow: decorators that depend on the config's values.

A Metaflow decorator cannot be switched off by a config value (`@project(name=None)` is an
error), but a `FlowMutator` reads the config when the flow is loaded and can remove or replace
decorators then. Metaflow packages this module with the flow (it packages every module that
defines a mutator).
"""

from __future__ import annotations

from metaflow import FlowMutator, project


class project_from_config(FlowMutator):
    """Keep the flow's @project only when the config names a project: replaced by
    @project(name=pipeline.project[, branch=pipeline.branch]), removed when pipeline.project is
    null. The flow declares @project statically because Metaflow registers the decorator's
    command-line options (--branch, --production) only for decorators present when the flow
    class is defined. Runs when the flow is loaded, before `start` validates the config, so it
    checks the two names itself and fails naming the key."""

    def pre_mutate(self, mutable_flow):
        from metaflow.exception import MetaflowException

        from prefix_rft.errors import UserError
        from steps.flow_config import project_attributes

        config = dict(mutable_flow.configs)["config"]
        try:
            attrs = project_attributes(dict(config.get("pipeline") or {}))
        except UserError as e:
            raise MetaflowException(f"config: {e}") from None
        # remove, then add: add_decorator(..., duplicates=OVERRIDE) keeps the static one too
        mutable_flow.remove_decorator("project")
        if attrs is not None:
            mutable_flow.add_decorator(project, deco_kwargs=attrs)


class nodes_from_config(FlowMutator):
    """Refuse, when the flow is loaded, a `pipeline.train.nodes` that this flow's graph does not
    run: Metaflow's graph is fixed by the flow's code, and a @parallel step can neither loop nor
    be skipped by a config value (on Kubernetes it would deploy a JobSet even for one node), so
    one node trains in the single-node flow (a `train_epoch` step) and several in the multi-node
    flow (a `train_nodes` step). Also refuses a node count out of range, naming the key."""

    def pre_mutate(self, mutable_flow):
        from metaflow.exception import MetaflowException

        from steps.flow_config import nodes_problem

        config = dict(mutable_flow.configs)["config"]
        multi = "train_nodes" in dict(mutable_flow.steps)
        problem = nodes_problem(dict(config.get("pipeline") or {}), multi_node_flow=multi)
        if problem:
            raise MetaflowException(f"config: key 'pipeline.train.nodes': {problem}")
