"""The 0/1 reward: Math-Verify on the final ``\\boxed{}`` answer (docs/ALGORITHM.md section 4).

This module owns answer extraction, grading one completion against its gold answer(s), and
grading batches in a process pool with a per-item timeout. The trainer, the data filter and the
evaluator all grade through it, so a reward means the same thing everywhere.

How one item is graded (`grade_one`):

1. `answer_region`: with ``think_tags`` the text after the last ``</think>``; without, the whole
   completion. If ``think_tags`` is on and there is no ``</think>``, the whole completion is graded
   (a template that never emits think tags must not silently score 0 on everything;
   truncation is the length limit's business, not the grader's).
2. `extract_final_boxed`: the content of the LAST ``\\boxed{..}`` / ``\\boxed {..}`` /
   ``\\fbox{..}`` of that region, brace-matched with nesting. None (status ``no_answer``) if there
   is none or if the last one is never closed (a truncated answer). Only this box is graded: an
   intermediate result elsewhere in the text cannot earn the reward.
3. Gold answers are parsed with Math-Verify's LaTeX + expression extraction (`parse_gold`); the
   prediction is parsed from ``"\\boxed{" + content + "}"`` with LaTeX extraction. The item is
   ``correct`` if ``math_verify.verify(gold, pred)`` holds for any gold answer.

Statuses (`STATUSES`), in the order they are decided:

* ``gold_unparseable``: no gold answer parses to anything (a data defect: filter such rows at
  data preparation). Decided before looking at the completion, so every
  completion of such a prompt is counted.
* ``no_answer``: no (closed) final box in the answer region.
* ``pred_unparseable``: the box content parses to nothing (e.g. an empty box).
* ``correct`` / ``wrong``.
* ``timeout``: the item took longer than ``timeout_s`` (in-process signal timer) or, in a pool,
  longer than its deadline in the parent (the worker is then killed).
* ``error``: an exception while grading, or the worker process died on this item.

Every status except ``correct`` gives reward 0.0, and none of them is silent: `RewardGrader.counts`
counts them, `reward_metrics` reports them, and the first message of each kind of timeout/error is
logged as a warning (a swallowed timeout error would otherwise turn every reward into 0 unseen).

Timeouts. Math-Verify's own timeout uses ``signal.alarm`` (whole seconds, main thread only), so it
is switched off and this module installs its own ``SIGPROF`` interval timer (``setitimer`` with
``ITIMER_PROF``, sub-second) around each item, with an exception class that derives from ``BaseException`` so that
the ``except Exception`` blocks inside Math-Verify and SymPy cannot swallow it. Signals only work
in a process's main thread: `grade_one` called from another thread grades without a time limit and
logs a warning once; use `RewardGrader(num_workers>0)` there. A signal cannot interrupt a single
long C call (a huge integer power, say); the pool's parent-side deadline covers that case.

Deadlines under load. The in-worker limit ``timeout_s`` counts CPU time of the grading process,
not wall time: a worker that waits for a CPU because other jobs load the machine does not use up
its limit, so an answer gets the same grade on an idle and on a loaded machine. The parent's
wall-clock deadline of a chunk is ``len(chunk) * timeout_s * wall_slack * load_factor() +
grace_s`` (`RewardGrader.wall_deadline`; ``wall_slack`` 4, ``load_factor`` = the 1-minute load
average per CPU, at least 1), a backstop for a worker stuck where no signal reaches it.

The pool (`RewardGrader` with ``num_workers > 0``) is a `concurrent.futures.ProcessPoolExecutor`
with the ``forkserver`` start method (``spawn`` where forkserver is unavailable): workers are forked
from a small single-threaded server process, never from the trainer itself, which runs CUDA and
other threads (fork-with-threads can deadlock), and a restart after a timeout costs a fork plus
one import instead of a fresh interpreter. Each worker grades in its main thread, so the signal
timer works there. Items go out in chunks (fewer round trips), with exactly ``num_workers``
chunks in flight so that a chunk's deadline (`RewardGrader.wall_deadline`, counted from its
submission) measures its own run time and not queueing. A chunk past its deadline gets the pool
killed and recreated; its items are retried one per chunk, and an item that again runs past its
own deadline is a ``timeout``. Chunks that were merely in flight at the time are resubmitted
unchanged. If a worker dies (segfault, OOM kill), the in-flight items are retried one at a time,
and one that kills a worker on its own is an ``error``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

logger = logging.getLogger(__name__)

STATUSES = (
    "correct",
    "wrong",
    "no_answer",
    "gold_unparseable",
    "pred_unparseable",
    "timeout",
    "error",
)

_DETAIL_MAX_CHARS = 300


@dataclass(frozen=True)
class GradeResult:
    """The grade of one completion."""

    reward: float  # 1.0 if correct else 0.0
    status: str  # one of STATUSES
    extracted: str | None  # content of the final \boxed{...} of the answer region, None if absent
    # for timeout / error / gold_unparseable: "Kind: what happened" (e.g. the exception type and
    # message); None otherwise
    detail: str | None = None


# ---------------------------------------------------------------------------------------------
# Answer extraction (pure string work, no Math-Verify)
# ---------------------------------------------------------------------------------------------

_THINK_END = "</think>"
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def answer_region(text: str, think_tags: bool = False) -> str:
    """The part of a completion that holds the answer.

    With ``think_tags``: the text after the last ``</think>``, or the whole text if there is no
    ``</think>`` (see the module docstring for why). Without: the whole text.
    """
    if think_tags:
        head, sep, tail = text.rpartition(_THINK_END)
        if sep:
            return tail
    return text


def extract_final_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (or ``\\boxed {...}``, ``\\fbox{...}``) in ``text``.

    Braces are matched with nesting; escaped braces (``\\{``, ``\\}``) and other backslash pairs
    (``\\\\``) do not count. Returns None if there is no box, or if the last box is never closed.
    """
    last = None
    for match in _BOX_OPEN.finditer(text):
        last = match
    if last is None:
        return None
    start = last.end()
    depth = 1
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character: \{ \} \\ and the first letter of a command
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


# ---------------------------------------------------------------------------------------------
# Math-Verify parsing and comparison
# ---------------------------------------------------------------------------------------------


class _MathVerifyTimeoutOffFilter(logging.Filter):
    """Drop Math-Verify's one-time "Timeout is disabled" warning: this module times items itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_MathVerifyTimeoutOffFilter())


def _math_verify():
    import math_verify  # imported lazily: sympy is slow to import

    return math_verify


@lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str) -> tuple:
    mv = _math_verify()
    config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    text = gold.strip()
    if not text:
        return ()
    parsed = mv.parse(
        "\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None, raise_on_error=True
    )
    if not parsed:
        parsed = mv.parse(
            "$" + text + "$", extraction_config=config, parsing_timeout=None, raise_on_error=True
        )
    return tuple(parsed)


def parse_gold(gold: str) -> list:
    """Math-Verify's parse of a gold answer string (a list of sympy objects and/or strings).

    Parsed as ``\\boxed{gold}``, then as ``$gold$`` if that gives nothing, with LaTeX and plain
    expression extraction. Cached: the G completions of one prompt share one gold.
    """
    return list(_parse_gold_cached(gold))


def gold_is_parseable(gold: str, *, timeout_s: float = 5.0) -> bool:
    """True if Math-Verify parses ``gold`` into something non-empty within ``timeout_s``.

    Meant for data preparation: drop rows that would otherwise score ``gold_unparseable`` for
    every completion. The time limit works in the main thread only.
    """
    try:
        with _time_limit(timeout_s):
            return len(_parse_gold_cached(gold)) > 0
    except _ItemTimeout:
        return False
    except Exception:  # an exception while parsing means "not parseable"
        return False


def _parse_pred(content: str) -> list:
    mv = _math_verify()
    return mv.parse(
        "\\boxed{" + content + "}",
        extraction_config=[mv.LatexExtractionConfig(boxed_match_priority=0)],
        parsing_timeout=None,
        raise_on_error=True,
    )


def _verify_any(golds_parsed: Sequence[list], pred: list) -> tuple[bool, BaseException | None]:
    """True if any (gold item, pred item) pair verifies. Comparisons that raise are remembered:
    they decide the status only if nothing matched."""
    mv = _math_verify()
    first_error = None
    for gold in golds_parsed:
        for g in gold:
            for p in pred:
                try:
                    if mv.verify(g, p, timeout_seconds=None, raise_on_error=True):
                        return True, None
                except Exception as e:  # recorded, becomes status "error"
                    if first_error is None:
                        first_error = e
    return False, first_error


# ---------------------------------------------------------------------------------------------
# Per-item timer
# ---------------------------------------------------------------------------------------------


class _ItemTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException so `except Exception` cannot swallow it."""


_warned_not_main_thread = False


def _raise_item_timeout(signum, frame):
    raise _ItemTimeout()


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise `_ItemTimeout` in this thread once this process has spent ``seconds`` of CPU time
    (and then every 0.1 s of CPU time, in case a bare ``except:`` somewhere swallows the first
    one).

    The limit is CPU time (``ITIMER_PROF``: user + system time of the process), not wall time:
    a grader that is descheduled because other jobs load the machine does not use up its limit,
    so an answer grades the same on an idle and on a loaded machine."""
    global _warned_not_main_thread
    if seconds is None or seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        if not _warned_not_main_thread:
            _warned_not_main_thread = True
            logger.warning(
                "grade_one called outside the main thread: the per-item timeout cannot be "
                "enforced there (signals are main-thread only). Use RewardGrader(num_workers>0)."
            )
        yield
        return
    start = time.process_time()
    old_handler = signal.signal(signal.SIGPROF, _raise_item_timeout)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_PROF, seconds, 0.1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old_handler)
        if old_delay > 0:  # someone else's timer was running: give it back what is left of it
            left = max(old_delay - (time.process_time() - start), 1e-3)
            signal.setitimer(signal.ITIMER_PROF, left, old_interval)


def load_factor() -> float:
    """The 1-minute load average per CPU of this machine, at least 1.0 (1.0 where unknown).

    It stretches the pool's wall-clock deadline (`RewardGrader.wall_deadline`): with twice as
    many runnable jobs as CPUs, a worker gets about half a CPU, so it needs about twice the wall
    time for the same CPU time."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 1.0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1.0, load / max(1, cpus or 1))


# ---------------------------------------------------------------------------------------------
# Grading one item
# ---------------------------------------------------------------------------------------------


def _as_gold_tuple(gold: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(gold, str):
        return (gold,)
    return tuple(str(g) for g in gold)


def _truncate(msg: str) -> str:
    return msg if len(msg) <= _DETAIL_MAX_CHARS else msg[: _DETAIL_MAX_CHARS - 3] + "..."


def _describe(e: BaseException) -> str:
    return _truncate(f"{type(e).__name__}: {e}")


def _grade_impl(
    completion: str, golds: tuple[str, ...], think_tags: bool, timeout_s: float
) -> GradeResult:
    """Grade one item; never raises (except KeyboardInterrupt/SystemExit). No logging here: the
    caller logs (in the parent process, once per kind)."""
    extracted = None
    try:
        extracted = extract_final_boxed(answer_region(completion, think_tags))
        with _time_limit(timeout_s):
            golds_parsed = [p for p in (parse_gold(g) for g in golds) if p]
            if not golds_parsed:
                detail = _truncate(f"GoldUnparseable: {list(golds)!r}")
                return GradeResult(0.0, "gold_unparseable", extracted, detail)
            if extracted is None:
                return GradeResult(0.0, "no_answer", None)
            pred = _parse_pred(extracted)
            if not pred:
                return GradeResult(0.0, "pred_unparseable", extracted)
            ok, err = _verify_any(golds_parsed, pred)
        if ok:
            return GradeResult(1.0, "correct", extracted)
        if err is not None:
            return GradeResult(0.0, "error", extracted, _describe(err) + " (in verify)")
        return GradeResult(0.0, "wrong", extracted)
    except _ItemTimeout:
        return GradeResult(
            0.0, "timeout", extracted, f"SignalTimeout: grading used more than {timeout_s} s of CPU time"
        )
    except Exception as e:  # becomes status "error", counted and logged
        return GradeResult(0.0, "error", extracted, _describe(e))


_logged_kinds: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def _log_first_of_kind(result: GradeResult) -> None:
    """Warn once per process for each kind of timeout/error (by exception type) and for the first
    unparseable gold; later ones are only counted."""
    if result.status not in ("timeout", "error", "gold_unparseable"):
        return
    kind = (result.status, (result.detail or "").split(":", 1)[0])
    with _logged_lock:
        if kind in _logged_kinds:
            return
        _logged_kinds.add(kind)
    logger.warning(
        "reward grading: %s (the first of its kind; later ones are only counted): %s; extracted=%r",
        result.status,
        result.detail,
        None if result.extracted is None else result.extracted[:200],
    )


def grade_one(
    completion: str,
    gold: str | Sequence[str],
    *,
    think_tags: bool = False,
    timeout_s: float = 5.0,
) -> GradeResult:
    """Grade one completion in this process. Several golds: correct if any of them matches.

    The time limit is a SIGALRM timer, enforced only in the main thread (see module docstring).
    """
    result = _grade_impl(completion, _as_gold_tuple(gold), think_tags, timeout_s)
    _log_first_of_kind(result)
    return result


# ---------------------------------------------------------------------------------------------
# Worker-side functions (module level so that they pickle by reference)
# ---------------------------------------------------------------------------------------------


def _worker_warmup() -> int:
    _parse_gold_cached("1")  # imports sympy/Math-Verify and builds the LaTeX parser once
    _parse_pred("\\frac{1}{2}")
    return os.getpid()


def _grade_chunk(
    items: Sequence[tuple[str, tuple[str, ...]]], think_tags: bool, timeout_s: float
) -> list[GradeResult]:
    return [_grade_impl(c, g, think_tags, timeout_s) for c, g in items]


# ---------------------------------------------------------------------------------------------
# The batch grader
# ---------------------------------------------------------------------------------------------


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class RewardGrader:
    """Grades batches of completions; a context manager that owns its worker processes.

    Args:
        num_workers: 0 grades in the calling thread (which must be the main thread for the timeout
            to work); > 0 grades in that many worker processes.
        timeout_s: CPU-time limit per item (see `_time_limit`). In a pool the parent also
            kills a worker whose chunk runs past `wall_deadline` (wall time, load-scaled).
        think_tags: grade only the text after the last ``</think>``.

    ``counts`` holds cumulative per-status counts since creation (every status present, from 0);
    ``pool_restarts`` counts worker-pool restarts (each one also logged). One batch at a time:
    `grade` is not meant to be called from several threads at once.
    """

    #: seconds a chunk may run past its scaled time budget before its worker is killed
    grace_s: float = 2.0
    #: wall seconds per CPU second a chunk gets before the parent kills it (times `load_factor`)
    wall_slack: float = 4.0
    #: seconds allowed for starting the workers (imports sympy) before giving up loudly
    startup_timeout_s: float = 120.0
    #: at most this many items per chunk (a hung chunk's items are retried one by one)
    max_chunk: int = 16
    # The function workers run on a chunk. Tests replace it (in a subclass) to simulate a hang.
    _chunk_fn: Callable[..., list[GradeResult]] = staticmethod(_grade_chunk)

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, think_tags: bool = False):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.think_tags = bool(think_tags)
        self.counts: collections.Counter = collections.Counter({s: 0 for s in STATUSES})
        self.pool_restarts = 0
        self._pool: cf.ProcessPoolExecutor | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RewardGrader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def _start_pool(self) -> cf.ProcessPoolExecutor:
        pool = cf.ProcessPoolExecutor(max_workers=self.num_workers, mp_context=_mp_context())
        # Submitting num_workers tasks back to back starts every worker now (the executor spawns
        # one per submit while none is idle), so chunk deadlines never include start-up time.
        warm = [pool.submit(_worker_warmup) for _ in range(self.num_workers)]
        done, not_done = cf.wait(warm, timeout=self.startup_timeout_s)
        if not_done:
            self._kill_pool(pool)
            raise RuntimeError(
                f"reward workers did not start within {self.startup_timeout_s} s; cannot grade"
            )
        for f in done:
            f.result()  # a worker that cannot import Math-Verify is a hard error, not reward 0
        return pool

    @staticmethod
    def _kill_pool(pool: cf.ProcessPoolExecutor) -> None:
        kill = getattr(pool, "kill_workers", None)  # Python >= 3.14
        if kill is not None:
            kill()
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=10)

    def _restart_pool(self, reason: str) -> None:
        self.pool_restarts += 1
        logger.warning("reward pool restart #%d: %s", self.pool_restarts, reason)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            self._kill_pool(pool)
        self._pool = self._start_pool()

    # -- grading -----------------------------------------------------------------------------

    def grade(
        self, completions: Sequence[str], golds: Sequence[str | Sequence[str]]
    ) -> list[GradeResult]:
        """Grade ``completions[i]`` against ``golds[i]`` (a string or several acceptable ones)."""
        if self._closed:
            raise RuntimeError("RewardGrader.grade called after close()")
        if len(completions) != len(golds):
            raise ValueError(
                f"completions and golds differ in length: {len(completions)} vs {len(golds)}"
            )
        items = [(str(c), _as_gold_tuple(g)) for c, g in zip(completions, golds)]
        if self.num_workers == 0 or not items:
            results = [_grade_impl(c, g, self.think_tags, self.timeout_s) for c, g in items]
        else:
            results = self._grade_in_pool(items)
        for r in results:
            self.counts[r.status] += 1
            _log_first_of_kind(r)
        return results

    def wall_deadline(self, items: int) -> float:
        """Wall seconds a chunk of ``items`` items may take before its worker is killed:
        ``items * timeout_s * wall_slack * load_factor() + grace_s``. The in-worker limit is CPU
        time; this wall-clock backstop is only for a worker stuck where no signal reaches it,
        so it is generous and grows with the machine's load."""
        return items * self.timeout_s * self.wall_slack * load_factor() + self.grace_s

    def _chunk_size(self, n: int) -> int:
        # about 4 chunks per worker so that the workers finish together, at most max_chunk items
        return max(1, min(self.max_chunk, -(-n // (4 * self.num_workers))))

    def _grade_in_pool(self, items: list[tuple[str, tuple[str, ...]]]) -> list[GradeResult]:
        if self._pool is None:
            self._pool = self._start_pool()
        n = len(items)
        size = self._chunk_size(n)
        results: list[GradeResult | None] = [None] * n
        pending = collections.deque(tuple(range(i, min(i + size, n))) for i in range(0, n, size))
        inflight: dict[cf.Future, tuple[tuple[int, ...], float]] = {}
        max_inflight = self.num_workers  # drops to 1 after a worker death, to find the culprit

        def collect(fut: cf.Future, idx: tuple[int, ...]) -> bool:
            """Store a finished chunk's results; False if the pool broke under it."""
            try:
                out = fut.result()
            except BrokenProcessPool:
                return False
            except Exception as e:  # e.g. a result that fails to unpickle
                out = [GradeResult(0.0, "error", None, _describe(e) + " (in the pool)")] * len(idx)
            for i, r in zip(idx, out):
                results[i] = r
            return True

        while pending or inflight:
            while pending and len(inflight) < max_inflight:
                idx = pending.popleft()
                fut = self._pool.submit(
                    type(self)._chunk_fn, [items[i] for i in idx], self.think_tags, self.timeout_s
                )
                inflight[fut] = (idx, time.monotonic() + self.wall_deadline(len(idx)))
            wait_s = max(0.0, min(d for _, d in inflight.values()) - time.monotonic())
            done, _ = cf.wait(list(inflight), timeout=wait_s, return_when=cf.FIRST_COMPLETED)
            broken: list[tuple[int, ...]] = []
            for fut in done:
                idx, _ = inflight.pop(fut)
                if not collect(fut, idx):
                    broken.append(idx)
            now = time.monotonic()
            expired = [f for f, (_, d) in inflight.items() if d <= now and not f.done()]
            if not broken and not expired:
                continue

            # Tear the pool down and decide what happens to every chunk that was in it.
            requeue: list[tuple[int, ...]] = []
            for fut in list(inflight):
                idx, _ = inflight.pop(fut)
                if fut in expired:
                    if len(idx) == 1:
                        results[idx[0]] = GradeResult(
                            0.0,
                            "timeout",
                            None,
                            f"DeadlineKill: worker killed after {self.wall_deadline(1):.1f}"
                            " s of wall time (stuck where the in-worker timer cannot interrupt)",
                        )
                    else:  # which item hung is unknown: retry them one by one
                        requeue.extend((i,) for i in idx)
                elif fut.done() and collect(fut, idx):
                    pass  # finished just in time
                elif fut.done():
                    broken.append(idx)
                else:
                    requeue.append(idx)  # collateral of the restart: resubmit as it was
            for idx in broken:
                if len(idx) == 1 and max_inflight == 1:
                    results[idx[0]] = GradeResult(
                        0.0, "error", None, "WorkerDied: the worker process died on this item"
                    )
                else:
                    requeue.extend((i,) for i in idx)
            if broken:
                max_inflight = 1
            pending.extendleft(reversed(requeue))
            reason = f"{len(expired)} chunk(s) past their deadline" if expired else "a worker died"
            self._restart_pool(reason)

        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def reward_metrics(results: Sequence[GradeResult]) -> dict[str, float]:
    """Stable, namespaced log keys for one batch of grades (anything with `.reward` and
    `.status`: grade results or graded trajectories). Fractions are 0.0 for an empty batch;
    the counts (timeouts, parse failures, errors, gold_unparseable, truncated) are absolute
    numbers. `truncated` is the trainer's status for a correct answer it scored 0 because the
    rollout was cut before its stop token (`reward.truncated: zero`)."""
    n = len(results)
    c = collections.Counter(r.status for r in results)
    return {
        "reward/mean": (sum(r.reward for r in results) / n) if n else 0.0,
        "reward/correct_frac": c["correct"] / n if n else 0.0,
        "reward/no_answer_frac": c["no_answer"] / n if n else 0.0,
        "reward/timeouts": float(c["timeout"]),
        "reward/parse_failures": float(c["pred_unparseable"]),
        "reward/errors": float(c["error"]),
        "reward/gold_unparseable": float(c["gold_unparseable"]),
        "reward/truncated": float(c["truncated"]),
    }
