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
    for key, value in extra.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg
