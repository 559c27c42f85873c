"""The tiny pipeline config the flow and step tests share: a 1-layer random-weight model with
SmolLM2's tokenizer, 16 synthetic training problems, 4 RL steps in 2 epochs of 2 (seconds on a
CPU). Kept out of the test modules because importing tests/test_pipeline.py imports Metaflow."""

from __future__ import annotations

from pathlib import Path

STEPS_TOTAL = 4  # rl.steps: 2 epochs x 2 steps


def tiny_config(model_dir, root: Path, *, experiment: str, **extra) -> dict:
    """`extra`: dotted keys, e.g. `**{"pipeline.eval_base": False}`."""
    cfg = {
        "method": "prefix_rft",
        "seed": 1,
        "model": {"name_or_path": str(model_dir),
                  "random_init": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "seed": 0}},
        "data": {"train": "synthetic:tiny", "test": "synthetic:tiny",
                 "synthetic_train_size": 16, "synthetic_test_size": 4},
        "rollout": {"num_prompts": 2, "group_size": 2, "max_response_len": 8,
                    "prefix_schedule": {"total_steps": STEPS_TOTAL}},
        "rl": {"steps": STEPS_TOTAL, "num_minibatches": 1, "micro_batch_size": 4,
               "demo_nll_prompts": 2},
        "reward": {"num_workers": 0},
        "eval": {"num_problems": 4, "max_new_tokens": 8},
        "save_every": 1,
        "keep_last": 1,
        "pipeline": {"epochs": 2, "checkpoint_root": str(Path(root) / "checkpoints")},
        "tracking": {"experiment": experiment},
    }
    return set_dotted(cfg, extra)


def set_dotted(cfg: dict, extra: dict) -> dict:
    """Apply {"a.b": value} overrides to a nested config dict in place."""
    for key, value in extra.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def run_chain(cfg_data: dict, ctx, *, on_trained=None):
    """The whole pipeline once, step function by step function, as the flow wires them, without
    Metaflow. `on_trained(start_manifest)` runs after the two epochs (before join_eval can
    prune). Returns a namespace with every step's manifest."""
    from types import SimpleNamespace

    from steps import data as sdata
    from steps import evaluate as seval
    from steps import finish as sfinish
    from steps import start as sstart
    from steps import train as strain
    from steps.common import config_from_dict, tracker_for

    m = sstart.start(cfg_data, ctx)
    cfg = config_from_dict(m["config"])
    tracking = m["tracking"]
    tracker = tracker_for(tracking)
    d = sdata.filter_data(cfg, lineage_prefix=m["lineage_prefix"], tracker=tracker,
                          tracking=tracking)
    kw = dict(plan=d["plan"], data_ref=d["data"], warm_start=m["warm_start"],
              lineage_prefix=m["lineage_prefix"], ctx=ctx, tracker=tracker, tracking=tracking,
              progress=False)
    e1 = strain.train_epoch(cfg, epoch=1, start_ref=None, **kw)
    e2 = strain.train_epoch(cfg, epoch=2, start_ref=e1["checkpoint"], **kw)
    extra = on_trained(m) if on_trained else None
    items = seval.plan_eval(cfg, [e1, e2], m["warm_start"])
    results = [seval.eval_task(cfg, it, data_ref=d["data"], tracker=tracker, tracking=tracking)
               for it in items]
    summary = seval.join_eval(cfg, results, [], [e1, e2], lineage_prefix=m["lineage_prefix"],
                              tracker=tracker, tracking=tracking)
    text = sfinish.end(tracking, summary)
    return SimpleNamespace(ctx=ctx, start=m, cfg=cfg, tracking=tracking, data=d, e1=e1, e2=e2,
                           extra=extra, items=items, results=results, summary=summary, text=text)
