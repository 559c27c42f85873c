"""The training loop: one code path for every preset. The `Trainer` owns the model, tokenizer,
engine, optimizers and run state, and orchestrates a step from the modules that do the work:

    RL step  = plan (`planner.py`) -> generate (the engine) -> grade, advantages (`grading.py`)
               -> token rules -> update (`update.py`: old log-probs/entropy, then per
               mini-batch entropy selection, exact norms, micro-batch backward, optimizer step)
    SFT step = the same update with every demo token under the NLL rule (`phases.py`)

Phases run in order: SFT (`sft.epochs` > 0), then RL (`rl.steps` > 0). ReLIFT's SFT steps run
inside the RL phase with their own optimizer. All randomness of a step (data order, demo choice,
prefix ratios, sampling seeds, random entropy selection) is a pure function of (seed, step), so
a run resumed from a checkpoint continues exactly where a straight run would be.
Under torchrun (WORLD_SIZE > 1) the same loop runs data-parallel with FSDP2 and gives the same
update as one process on the whole batch (prefix_rft/train/distributed.py says how).
Metrics are returned (and appended to `metrics.jsonl`) as one flat dict per step, with stable,
namespaced keys; the tracking layer (MLflow) consumes these dicts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prefix_rft.core.config import Config, check_world
from prefix_rft.data.problem import Problem
from prefix_rft.errors import UserError
from prefix_rft.rollout.engines.base import SamplingParams, needs_weight_sync
from prefix_rft.rollout.engines.factory import EngineSpec, make_engine
from prefix_rft.rollout.engines.weight_sync import policy_weights
from prefix_rft.train import distributed as D
from prefix_rft.train import grading, phases
from prefix_rft.train import planner as P
from prefix_rft.train.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from prefix_rft.train.optim import make_optimizer, reapply_schedule
from prefix_rft.train.planner import Trajectory
from prefix_rft.train.precision import autocast_context, autocast_dtype, compile_layers, use_packing
from prefix_rft.train.update import Updater

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    phase: str = "sft"  # "sft" | "rl" | "done"
    global_step: int = 0  # completed RL training steps (the schedule's clock)
    sft_step: int = 0  # completed SFT optimizer steps
    optimizer_steps: int = 0  # all policy optimizer steps (SFT + RL + ReLIFT)
    relift_steps: int = 0
    rl_epoch: int = 0  # data pass of the RL phase and position inside its permutation
    rl_cursor: int = 0
    sft_epoch: int = 0
    sft_cursor: int = 0
    relift_buffer: list = field(default_factory=list)  # [(problem index, demo index)]


def _duration(seconds: float) -> str:
    """12s, 3m 05s, 2h 04m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"



def _engine_dtype(model_dtype: str) -> str:
    """The dtype an engine with its own weights decodes in: the policy's, float32 master
    weights (trained under bfloat16 autocast or not) as bfloat16."""
    return "bfloat16" if model_dtype == "float32" else model_dtype


class Trainer:
    """Trains a policy with the preset in `cfg`. Build with a config; `model`, `tokenizer`,
    `train`/`test` problems may be passed in (tests, notebooks) instead of loaded."""

    def __init__(
        self,
        cfg: Config,
        *,
        model=None,
        tokenizer=None,
        train: Sequence[Problem] | None = None,
        test: Sequence[Problem] | None = None,
        output_dir: str | Path | None = None,
        progress: bool = True,
        grader=None,
    ):
        from prefix_rft import models
        from prefix_rft.data.lengths import check_training_prompts
        from prefix_rft.rollout import prompting

        self.cfg = cfg
        D.init_from_env()
        self.rank, self.world_size = D.world()
        check_world(cfg, self.world_size)
        self.progress = progress and self.rank == 0
        self.output_dir = Path(output_dir) if output_dir else None
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.device = D.device_for(cfg.model.device)
        self.packed = use_packing(cfg.model, self.device)  # padding-free passes (`lp.passes`)
        # mixed precision of the passes and rollouts (float32 master weights): `model.autocast`
        self.autocast = autocast_dtype(cfg.model, self.device)
        if cfg.model.autocast == "auto":
            log.info("model.autocast auto: %s on %s", self.autocast or "off (float32)",
                     self.device.type)
        if tokenizer is None:
            tokenizer = models.load_tokenizer(cfg.model.name_or_path, chat_template=cfg.model.chat_template)
        self.tokenizer = tokenizer
        # the data before the model: a bad file or row fails in seconds, before weights load
        self.train_set, self.test_set = self._load_problems(train, test)
        self.model = self._build_model(model)
        # a prompt that cannot fit the context is refused here, before any rollout
        check_training_prompts(cfg, tokenizer, getattr(self.model, "config", None),
                               self.train_set, self.test_set)
        self.stop_ids = prompting.stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.ids = P.TokenIds(tokenizer, self.train_set, cfg.model.think_tags)
        self.engine = self._build_engine()
        self.rollout_logprobs = self._wants_rollout_logprobs()
        self.updater = Updater(
            self.model, loss_cfg=cfg.loss, max_response_len=cfg.rollout.max_response_len,
            seed=cfg.seed, pad_id=self.pad_id, packed=self.packed, autocast=self.autocast,
            world_size=self.world_size)
        self._grader = grader
        self.state = TrainState(phase="sft" if cfg.sft.epochs > 0 else "rl")
        self.opt = self.sched = None
        self.relift_opt = self.relift_sched = None
        self._make_phase_optimizer()
        self.history: list[dict] = []
        # Called with every step's metrics dict (the pipeline logs them to MLflow live).
        self.listeners: list = []

    # ------------------------------------------------------------------ setup helpers
    def _build_model(self, model):
        """The policy on this trainer's device (loaded or randomly initialised unless given),
        sharded under torchrun, in training mode, with `model.activation_checkpointing` and
        `model.compile_layers` applied."""
        from prefix_rft import models

        cfg = self.cfg.model
        if model is None:
            if cfg.random_init:
                model = models.tiny_random_model(len(self.tokenizer), **dict(cfg.random_init))
            else:
                model = models.load_policy(cfg.name_or_path, dtype=cfg.dtype,
                                           attn_implementation=cfg.attn_implementation)
        model = D.shard(model.to(self.device))  # FSDP2 under torchrun, else unchanged
        model.train()
        if cfg.activation_checkpointing:
            models.enable_activation_checkpointing(model)
        if cfg.compile_layers:
            compile_layers(model)
        return model

    def _load_problems(self, train, test) -> tuple[list[Problem], list[Problem]]:
        """The training and test problems (given, or read from `data`); every training problem
        has a demonstration when the method trains on them."""
        from prefix_rft.data import sources

        cfg = self.cfg
        demos = cfg.needs_demos()
        train_set = list(train) if train is not None else sources.training_problems(
            cfg.data, seed=cfg.seed, require_demos=demos
        )
        test_set = list(test) if test is not None else sources.test_problems(cfg.data, seed=cfg.seed)
        if not train_set:
            raise UserError(f"data.train={cfg.data.train!r}: no training problems")
        if demos:
            for p in train_set:
                if not p.demonstrations:
                    raise UserError(
                        f"data.train: problem '{p.id}' has no demonstration "
                        f"(method '{cfg.method}' trains on demonstrations)"
                    )
        return train_set, test_set

    def _build_engine(self):
        """The rollout engine (`rollout.engine`) over this trainer's model.
        The compiled static-cache path captures weight addresses; FSDP2 re-gathers weights into
        new buffers for every rollout phase, so data-parallel runs decode the plain way. vLLM
        starts from the model directory (config, tokenizer) and then takes the policy's
        weights from the trainer (`_rollout_phase`)."""
        from prefix_rft import models

        cfg, v = self.cfg, self.cfg.rollout.vllm
        decoding = cfg.model.decoding if self.world_size == 1 else "generate"
        model_dir = None if cfg.model.random_init else models.resolve_model_path(cfg.model.name_or_path)
        engine, name = make_engine(cfg.rollout.engine, EngineSpec(
            self.tokenizer, model=self.model, model_dir=model_dir,
            dtype=_engine_dtype(cfg.model.dtype), device=str(self.device),
            max_batch_size=cfg.rollout.max_batch_size, seed=cfg.seed, decoding=decoding,
            gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
            sleep_level=v.sleep_level, enforce_eager=v.enforce_eager,
            world_size=self.world_size), key="rollout.engine")
        if cfg.rollout.engine == "auto":
            log.info("rollout.engine auto: %s", name)
        return engine

    def _wants_rollout_logprobs(self) -> bool:
        """Whether rollouts return the engine's log-probs (`rollout.logprob_gap`; auto: for an
        engine with its own weights, or when loss.rollout_correction uses them)."""
        gap = self.cfg.rollout.logprob_gap
        return gap == "on" or (gap == "auto" and (
            needs_weight_sync(self.engine) or self.cfg.loss.rollout_correction != "off"))

    def _sync_engine(self) -> float:
        """Push the policy's weights into an engine that keeps its own copy, parameter by
        parameter (under FSDP2 each is gathered on its own, a collective every rank joins, and
        only its engine-dtype copy is kept); the seconds it took."""
        t0 = time.perf_counter()
        self.engine.load_weights(policy_weights(self.model))
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def _rollout_phase(self, autocast: bool = True) -> Iterator[float]:
        """The engine ready to generate from the current policy for the duration; yields the
        seconds of the weight push. An engine with its own weights gets them pushed before and
        releases its memory after (the policy stays sharded: the engine does not read it); the
        HF engine generates from the policy itself, unsharded on every rank for the duration
        (`autocast`: in the training passes' precision)."""
        if needs_weight_sync(self.engine):
            seconds = self._sync_engine()
            try:
                yield seconds
            finally:
                self.engine.release()
            return
        with D.unsharded(self.model), (autocast_context(self.device, self.autocast) if autocast
                                       else contextlib.nullcontext()):
            yield 0.0

    @property
    def grader(self):
        if self._grader is None:
            from prefix_rft.rollout.reward import RewardGrader

            self._grader = RewardGrader(
                num_workers=self.cfg.reward.num_workers, timeout_s=self.cfg.reward.timeout_s,
                think_tags=self.cfg.model.think_tags,
            )
        return self._grader

    def close(self) -> None:
        if self._grader is not None and hasattr(self._grader, "close"):
            self._grader.close()

    def sft_total_steps(self) -> int:
        return self.cfg.sft.steps(len(self.train_set))

    def _make_phase_optimizer(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.state.phase == "sft":
            self.opt, self.sched = make_optimizer(params, self.cfg.sft.optim, self.sft_total_steps())
        else:
            total = self.cfg.rl.steps * self.cfg.rl.num_minibatches * self.cfg.rl.ppo_epochs
            self.opt, self.sched = make_optimizer(params, self.cfg.rl.optim, total)
        if self.cfg.relift.enabled and self.relift_opt is None:
            self.relift_opt, self.relift_sched = make_optimizer(params, self.cfg.relift.optim, 1)

    def _next_indices(self, n: int, phase: str) -> list[int]:
        """The next `n` problem indices of `phase`'s data order; advances its position."""
        s, sft = self.state, phase == "sft"
        out, epoch, cursor = P.next_indices(
            self.cfg.seed, phase, s.sft_epoch if sft else s.rl_epoch,
            s.sft_cursor if sft else s.rl_cursor, n, len(self.train_set))
        if sft:
            s.sft_epoch, s.sft_cursor = epoch, cursor
        else:
            s.rl_epoch, s.rl_cursor = epoch, cursor
        return out

    # ------------------------------------------------------------------ main entry
    @property
    def train_steps(self) -> int:
        """Training steps done so far, SFT and RL together (the pipeline's step axis)."""
        return self.state.sft_step + self.state.global_step

    def fit(self, max_steps: int | None = None,
            on_checkpoint: Callable[[Path, bool], None] | None = None,
            final_model_only: bool = False) -> list[dict]:
        """Run the remaining phases (or at most `max_steps` steps of them); return the metrics.

        `on_checkpoint` is the one save policy of every caller. With it, a checkpoint is
        written to output_dir/checkpoints/<checkpoint_name()> every `save_every` training steps
        (SFT and RL counted together, `train_steps`) while more steps follow in this call, and
        once more when the call ends; `on_checkpoint(path, final)` then runs on every rank and
        decides what becomes of it (the CLI prunes old ones locally, the pipeline commits it to
        its store). Without it, nothing is written. `final_model_only`: the checkpoint written
        when the whole run has finished (phase "done") leaves out the optimizer and scheduler
        states (`save(model_only=True)`); every other checkpoint keeps them."""
        if on_checkpoint is not None and self.output_dir is None:
            raise ValueError("Trainer.fit(on_checkpoint=...) needs a trainer with an output_dir")
        done = 0
        for phase in ("sft", "rl"):
            if self.state.phase == phase:
                left = None if max_steps is None else max_steps - done
                done += self._run_phase(phase, left, on_checkpoint)
        if on_checkpoint is not None:
            self._checkpoint(on_checkpoint, final=True,
                             model_only=final_model_only and self.state.phase == "done")
        return self.history

    def _run_phase(self, phase: str, limit: int | None, on_checkpoint) -> int:
        """Steps of `phase` until it ends or `limit` steps ran (then the next phase begins);
        returns how many ran."""
        from tqdm.auto import tqdm

        sft = phase == "sft"
        total = self.sft_total_steps() if sft else self.cfg.rl.steps

        def count() -> int:
            return self.state.sft_step if sft else self.state.global_step

        bar = tqdm(total=total, initial=count(), desc="sft" if sft else self.cfg.method,
                   disable=not self.progress)
        done = 0
        while count() < total and (limit is None or done < limit):
            m = self.sft_step() if sft else self.rl_step()
            done += 1
            bar.update(1)
            bar.set_postfix(**({"loss": f"{m['loss']:.3f}"} if sft
                               else {"reward": f"{m['reward/mean']:.3f}"}))
            if not sft:
                self._maybe_evaluate()
            if count() >= total:
                self._end_phase()
            more = self.state.phase != "done" and (limit is None or done < limit)
            every = self.cfg.save_every
            if on_checkpoint is not None and more and every and self.train_steps % every == 0:
                self._checkpoint(on_checkpoint, final=False)
        bar.close()
        if count() >= total and self.state.phase == phase:
            self._end_phase()
        return done

    def _end_phase(self) -> None:
        """SFT -> RL (with its own optimizer and schedule) or done; RL -> done."""
        if self.state.phase == "sft" and self.cfg.rl.steps > 0:
            self.state.phase = "rl"
            self._make_phase_optimizer()
        else:
            self.state.phase = "done"

    def _maybe_evaluate(self) -> None:
        """The held-out evaluation every `eval.every_steps` RL steps, recorded as a metrics row."""
        every = self.cfg.eval.every_steps
        if every and self.test_set and self.state.global_step % every == 0:
            ev = {k: v for k, v in self.evaluate().items() if k != "samples"}
            self._record({"phase": "eval", "step": self.state.global_step, **ev})

    def _checkpoint(self, on_checkpoint, final: bool, model_only: bool = False) -> None:
        path = self.save(self.output_dir / "checkpoints" / self.checkpoint_name(),
                         model_only=model_only)
        on_checkpoint(path, final)

    def _record(self, metrics: dict) -> dict:
        """Keep a step's metrics; rank 0 alone passes them on (listeners, metrics.jsonl, log):
        every rank holds the same global values, logged once."""
        self.history.append(metrics)
        if self.rank != 0:
            return metrics
        for listener in self.listeners:
            listener(metrics)
        if self.output_dir:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        every = self.cfg.log_every
        if every and metrics.get("phase") in ("sft", "rl") and self.train_steps % every == 0:
            log.info("%s", self.progress_line(metrics))
        elif metrics.get("phase") == "eval":
            log.info("step %d/%d eval | held-out accuracy %.3f over %d problems", self.train_steps,
                     self.total_steps, metrics["eval/accuracy"], metrics["eval/num_problems"])
        return metrics

    @property
    def total_steps(self) -> int:
        """Training steps of the whole run, SFT and RL together (`train_steps` counts them)."""
        return (self.sft_total_steps() if self.cfg.sft.epochs > 0 else 0) + self.cfg.rl.steps

    def progress_line(self, metrics: dict) -> str:
        """One log line for a step: where the run is, what it earns, when it will be done.
        `step 6/16 rl | reward 0.344 (policy 0.292) | loss 0.0123 | demo nll 0.210 | 21.4 s/step,
        ETA 3m 34s` (the pace: the mean step time of this process so far)."""
        done, total = self.train_steps, self.total_steps
        times = [m["time/step"] for m in self.history if m.get("phase") in ("sft", "rl")
                 and "time/step" in m]
        parts = [f"step {done}/{total} {metrics['phase']}"]
        if "reward/mean" in metrics:
            policy = metrics.get("reward/policy_mean")
            parts.append(f"reward {metrics['reward/mean']:.3f}"
                         + (f" (policy {policy:.3f})" if policy is not None else ""))
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4g}")
        if "demo/nll" in metrics:
            parts.append(f"demo nll {metrics['demo/nll']:.3f}")
        if times:
            pace = sum(times) / len(times)
            parts.append(f"{pace:.1f} s/step, ETA {_duration(pace * max(0, total - done))}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ rollouts
    def plan_and_generate(self, indices: Sequence[int]) -> tuple[list[Trajectory], dict]:
        """Plan every group (`planner.plan_rollouts`), generate this rank's requests in the
        passes' precision, assemble its trajectories; returns them with the prefix metrics."""
        c, step = self.cfg, self.state.global_step
        plan = P.plan_rollouts(c, step, indices, self.ids,
                               lambda i: len(self.train_set[i].demonstrations))
        sampling = SamplingParams(c.rollout.temperature, c.rollout.top_p, seed=c.seed * 7919 + step,
                                  return_logprobs=self.rollout_logprobs)
        with self._rollout_phase() as sync:
            outs = self.engine.generate(plan.requests, 1, sampling) if plan.requests else []
        info = dict(plan.info)
        if needs_weight_sync(self.engine):
            info["time/weight_sync"] = sync
        return P.assemble(plan, outs, self.ids), info

    def grade(self, trajs: Sequence[Trajectory]) -> None:
        """Reward and status of each trajectory (`grading.grade`, `reward.truncated`)."""
        grading.grade(trajs, self.tokenizer, [self.train_set[t.problem].answer for t in trajs],
                      self.grader, self.cfg.reward.truncated)

    def reward_metrics(self, trajs: Sequence[Trajectory]) -> dict:
        """Reward metrics of graded trajectories; fails the step past reward.max_failure_rate."""
        return grading.reward_metrics(trajs, self.cfg.reward.max_failure_rate,
                                      self.state.global_step)

    # ------------------------------------------------------------------ updates
    def update(self, trajs: list[Trajectory], **kwargs) -> dict:
        """`Updater.update` of the policy (keyword arguments as there); counts its optimizer
        steps in the state and returns its metrics."""
        metrics, steps = self.updater.update(trajs, **kwargs)
        self.state.optimizer_steps += steps
        return metrics

    def _demo_nll_metric(self, indices: Sequence[int]) -> dict:
        """`demo/nll` of a step, after its update, in every phase alike (so that SFT and RL runs
        share the curve): the first `rl.demo_nll_prompts` problems of the step's batch; nothing
        when that is 0 or none of them has a demonstration."""
        n = self.cfg.rl.demo_nll_prompts
        if not n or not any(self.train_set[i].demonstrations for i in indices[:n]):
            return {}
        return {"demo/nll": self.demo_nll(indices[:n])}

    @torch.no_grad()
    def demo_nll(self, indices: Sequence[int]) -> float:
        """Token-mean NLL of the first demonstration of each problem (the SFT loss)."""
        with_demo = [i for i in indices if self.train_set[i].demonstrations]
        logps, _ = self.updater.score_ids(
            [self.ids.prompt(i) for i in with_demo], [self.ids.demo(i, 0) for i in with_demo],
            self.cfg.rl.micro_batch_size, temperature=1.0, with_entropy=False,
        )
        tot = sum(float(x.sum()) for x in logps)
        n = sum(x.numel() for x in logps)
        return -tot / max(1, n)

    def _nll_update(self, pairs: Sequence[tuple[int, int]], micro: int, opt, sched, optim_cfg,
                    seed_key: tuple) -> tuple[list[Trajectory], dict]:
        """One supervised update (SFT or ReLIFT) on the demonstrations `pairs`."""
        trajs = phases.sft_trajectories(pairs, self.cfg.sft.max_len, self.ids.prompt,
                                        self.ids.demo)
        m = self.update(trajs, micro=micro, minibatches=1, epochs=1, opt=opt, sched=sched,
                        optim_cfg=optim_cfg, nll_coef=1.0, aggregation="token_mean",
                        temperature=1.0, select=False, seed_key=seed_key)
        return trajs, m

    # ------------------------------------------------------------------ steps
    def sft_step(self) -> dict:
        """One SFT optimizer step: token-mean NLL on a batch of demonstrations."""
        t0 = time.perf_counter()
        c = self.cfg
        idx = self._next_indices(c.sft.batch_size, "sft")
        pairs = phases.sft_pairs(idx, self.train_set, c.seed, self.state.sft_step)
        trajs, m = self._nll_update(pairs, c.sft.micro_batch_size, self.opt, self.sched,
                                    c.sft.optim, ("sft", self.state.sft_step))
        m.update(self._demo_nll_metric(idx))
        self.state.sft_step += 1
        m.update({"phase": "sft", "step": self.state.sft_step, "time/step": time.perf_counter() - t0,
                  "tokens/per_second": sum(len(t.response_ids) for t in trajs) / (time.perf_counter() - t0)})
        m.pop("tokens/demo_share", None)
        return self._record(m)

    def rl_step(self) -> dict:
        """One training step: rollouts of `rollout.num_prompts` prompts and their updates."""
        c = self.cfg
        t0 = time.perf_counter()
        idx = self._next_indices(c.rollout.num_prompts, "rl")
        trajs, metrics = self.plan_and_generate(idx)  # this rank's groups
        t1 = time.perf_counter()
        self.grade(trajs)
        trajs = grading.gather_trajectories(trajs)  # the whole step, on every rank
        metrics.update(self.reward_metrics(trajs))
        t2 = time.perf_counter()
        grading.assign_advantages(trajs, c.loss.advantage)
        metrics.update(grading.rollout_metrics(trajs))
        if c.relift.enabled:
            self.state.relift_buffer.extend(
                phases.relift_failures(trajs, self.train_set, c.seed, self.state.global_step))
        for t in trajs:
            t.rule = P.rule_for_tokens(t, c.loss)
        t3 = time.perf_counter()
        upd = self.update(trajs, micro=c.rl.micro_batch_size, minibatches=c.rl.num_minibatches,
                          epochs=c.rl.ppo_epochs, opt=self.opt, sched=self.sched,
                          optim_cfg=c.rl.optim, nll_coef=c.loss.demo_nll_coef,
                          aggregation=c.loss.aggregation, temperature=c.rollout.temperature,
                          seed_key=("rl", self.state.global_step),
                          measure_gap=self.rollout_logprobs)
        t4 = time.perf_counter()
        metrics.update(upd)
        if c.relift.enabled:
            metrics.update(self._relift_maybe_step())
        metrics.update(self._demo_nll_metric(idx))
        self.state.global_step += 1
        t5 = time.perf_counter()
        n_tokens = sum(len(t.response_ids) for t in trajs)
        metrics.update({
            "phase": "rl", "step": self.state.global_step,
            "time/generation": t1 - t0 - metrics.get("time/weight_sync", 0.0),
            "time/reward": t2 - t1,
            "time/update": t4 - t3 - upd["time/old_logprobs"],
            "time/step": t5 - t0, "tokens/per_second": n_tokens / (t5 - t0),
            "tokens/total": sum(len(t.prompt_ids) + len(t.response_ids) for t in trajs),
        })
        return self._record(metrics)

    def _relift_maybe_step(self) -> dict:
        """ReLIFT's SFT step on the buffered failures once `relift.buffer_size` are buffered."""
        c = self.cfg.relift
        m = {"relift/buffer_size": len(self.state.relift_buffer)}
        if len(self.state.relift_buffer) < c.buffer_size:
            return m
        pairs = self.state.relift_buffer[: c.buffer_size]
        self.state.relift_buffer = self.state.relift_buffer[c.buffer_size :]
        _, upd = self._nll_update(pairs, c.micro_batch_size, self.relift_opt, self.relift_sched,
                                  c.optim, ("relift", self.state.relift_steps))
        self.state.relift_steps += 1
        m.update({"relift/sft_loss": upd["loss"], "relift/steps": self.state.relift_steps,
                  "relift/buffer_size": len(self.state.relift_buffer)})
        return m

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, problems: Sequence[Problem] | None = None) -> dict:
        from prefix_rft.eval.heldout import evaluate_problems

        problems = list(problems if problems is not None else self.test_set)[: self.cfg.eval.num_problems]
        with self._rollout_phase(autocast=False):  # every rank evaluates all (rank 0 records)
            return evaluate_problems(
                self.engine, self.tokenizer, problems, self.grader, self.cfg.eval,
                think_tags=self.cfg.model.think_tags, seed=self.cfg.seed,
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, model_only: bool = False) -> dict:
        """Everything besides the weights that continues this run exactly: the `TrainState`
        (as a dict), the optimizer and LR-scheduler states (optimizers keyed by parameter name:
        collective under torchrun, complete on rank 0) and the python/torch RNG states.
        `model_only` (a finished run's last checkpoint, as HF Trainer's `save_only_model`): no
        optimizer or scheduler state, marked so that nothing continues from it by mistake."""
        keep = not model_only
        return {
            "state": asdict(self.state),
            "model_only": model_only,
            "optimizer": (D.full_optimizer_state(self.model, self.opt)
                          if self.opt and keep else None),
            "scheduler": self.sched.state_dict() if self.sched and keep else None,
            "relift_optimizer": (D.full_optimizer_state(self.model, self.relift_opt)
                                 if self.relift_opt and keep else None),
            "relift_scheduler": (self.relift_sched.state_dict()
                                 if self.relift_sched and keep else None),
            "rng": rng_states(),
        }

    def load_state_dict(self, sd: dict, source: str = "the checkpoint") -> None:
        """Restore what `state_dict` returned: the state, the phase's optimizer and schedule
        (rebuilt, then loaded), ReLIFT's, and the RNG states."""
        self.state = TrainState(**sd["state"])
        self.state.relift_buffer = [tuple(x) for x in self.state.relift_buffer]
        saved_phase = self._reopen_phase()
        if sd.get("model_only") and self.state.phase != "done":
            raise UserError(
                f"{source} holds the model only (written at the end of a finished run with "
                f"the optimizer and scheduler states left out): it cannot continue the "
                f"{self.state.phase} phase to the larger budget of this config; start a new run "
                "from its weights instead (the pipeline's warm start, or model.name_or_path "
                "pointing at its model/ directory)")
        self._make_phase_optimizer()
        if sd["optimizer"] is not None and saved_phase == self.state.phase:
            load_optimizer_state(self.model, self.opt, sd["optimizer"])
            self.sched.load_state_dict(sd["scheduler"])
            reapply_schedule(self.sched)  # the rate of this config's total (a changed budget)
        if sd["relift_optimizer"] is not None and self.relift_opt is not None:
            load_optimizer_state(self.model, self.relift_opt, sd["relift_optimizer"])
            self.relift_sched.load_state_dict(sd["relift_scheduler"])
        restore_rng_states(sd["rng"])

    def _reopen_phase(self) -> str:
        """A finished run (phase done) resumed with a larger budget continues: SFT while no RL
        step was taken and `sft.epochs` now asks for more, else RL while `rl.steps` does.
        Returns the phase whose optimizer the checkpoint holds (the last one that ran), so that
        an RL phase opened after a finished SFT-only run starts with a fresh optimizer, as the
        SFT -> RL switch does."""
        s = self.state
        ran = s.phase if s.phase != "done" else ("rl" if s.global_step > 0 else "sft")
        if s.phase == "done":
            if s.global_step == 0 and self.cfg.sft.epochs > 0 and s.sft_step < self.sft_total_steps():
                s.phase = "sft"
            elif s.global_step < self.cfg.rl.steps:
                s.phase = "rl"
            if s.phase != "done":
                log.info("resume: the finished run continues its %s phase (budget raised to "
                         "%d steps)", s.phase, self.total_steps)
        return ran if s.phase != "done" else "done"

    def save(self, path: str | Path, model_only: bool = False) -> Path:
        """Write a checkpoint directory (`prefix_rft.train.checkpoint`); every rank must call it.
        `model_only`: without the optimizer and scheduler states (see `state_dict`)."""
        return save_checkpoint(path, model=self.model, tokenizer=self.tokenizer,
                               trainer_state=self.state_dict(model_only), config=self.cfg)

    def checkpoint_name(self) -> str:
        """`step-000012` in the RL phase, `step-000000-sft000034` during SFT: sorts in order."""
        name = f"step-{self.state.global_step:06d}"
        if self.state.phase == "sft":
            name += f"-sft{self.state.sft_step:06d}"
        return name

    def load(self, path: str | Path) -> None:
        """Continue from a checkpoint: its weights, then its trainer state."""
        self.load_state_dict(load_checkpoint(path, self.model), source=str(path))
