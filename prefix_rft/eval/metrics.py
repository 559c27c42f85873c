"""Metrics of the benchmark evaluation (the avg@k protocol of Prefix-RFT, arXiv 2507.01679).

The paper samples n = 32 completions per problem at temperature 0.6 and grades each with
Math-Verify. Everything here works on the resulting 0/1 table `correct[i][j]` (problem i,
sample j) and, for majority voting, on the extracted answers. Pure Python + numpy.

Formulas (problem i has n_i samples, c_i of them correct; P problems):

    per-problem accuracy   a_i = c_i / n_i
    avg@n                  (1/P) * sum_i a_i
    pass@k (unbiased)      1 - C(n-c, k) / C(n, k)                       (Chen et al. 2021)
                           = 1 - prod_{i=n-c+1}^{n} (1 - k/i)            (stable form used)
                           = 1 exactly when n - c < k
    pass@k table           (1/P) * sum_i pass@k(n_i, c_i, k)
    maj@n                  (1/P) * sum_i [the most frequent extracted answer of problem i
                           is correct]; None answers are ignored, ties go to the answer seen
                           first, no answer at all counts as wrong
    macro average          (1/B) * sum_b score_b                         (unweighted over benchmarks)
    bootstrap CI           percentile interval of the mean over problems:
                           idx = default_rng(seed).integers(0, P, size=(n_boot, P)),
                           m = x[idx].mean(axis=1), (quantile(m, alpha/2), quantile(m, 1-alpha/2))
    paired comparison      d_i = b_i - a_i on the problems both runs have;
                           diff = mean(d), CI = bootstrap CI of d (same scheme),
                           p = (1 + #{|mean(s*d)| >= |mean(d)|}) / (1 + n_boot) with
                           s = default_rng(seed).integers(0, 2, size=(n_boot, P)) * 2 - 1
                           (two-sided paired sign-flip permutation test)

Across independent runs (seeds; x_1..x_n one score per run):

    seed mean and CI       mean = (1/n) sum x_r, s = sqrt(sum (x_r - mean)^2 / (n - 1)),
                           CI = mean -+ t_{1-alpha/2, n-1} * s / sqrt(n)      (Student's t)
    difference of methods  diff = mean(b) - mean(a), se^2 = s_a^2/n_a + s_b^2/n_b,
                           df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)),
                           CI = diff -+ t_{1-alpha/2, df} * se                (Welch)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Permuted statistics within this distance of the observed one count as "at least as extreme":
# sums of the same |d_i| in another order can differ from the observed mean by rounding only.
_PERM_TOL = 1e-12


def _check_table(correct: Sequence[Sequence[bool]]) -> None:
    """Reject an empty table or an empty row: their accuracy is undefined, not zero."""
    if len(correct) == 0:
        raise ValueError("no problems: the correctness table is empty")
    for i, row in enumerate(correct):
        if len(row) == 0:
            raise ValueError(f"problem row {i} has no samples")


def per_problem_accuracy(correct: Sequence[Sequence[bool]]) -> list[float]:
    """c_i / n_i for each problem; the unit that avg@n and the bootstrap average over."""
    _check_table(correct)
    return [sum(bool(x) for x in row) / len(row) for row in correct]


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of the per-problem accuracy (avg@n of the paper).

    Each problem weighs the same even when rows differ in length (e.g. some generations
    failed), so a problem with more samples does not count more.
    """
    return math.fsum(per_problem_accuracy(correct)) / len(correct)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021).

    Uses the product form because C(n, k) overflows floats for large n; the result is exactly
    1.0 when every k-subset must contain a correct sample (n - c < k).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _default_ks(n: int) -> list[int]:
    """Powers of two up to n, plus n itself (n=32 -> 1..32, n=6 -> 1, 2, 4, 6)."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_table(correct: Sequence[Sequence[bool]],
                    ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems for each k; default ks fit the shortest row."""
    _check_table(correct)
    lengths = [len(row) for row in correct]
    n_min = min(lengths)
    ks = _default_ks(n_min) if ks is None else list(ks)
    counts = [sum(bool(x) for x in row) for row in correct]
    table: dict[int, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"pass@k needs k >= 1, got k={k}")
        if k > n_min:
            raise ValueError(f"pass@k with k={k} needs at least {k} samples per problem, "
                             f"but some problem has only {n_min}")
        table[k] = math.fsum(pass_at_k(n, c, k) for n, c in zip(lengths, counts)) / len(counts)
    return table


def _strip(answer: str) -> str:
    return answer.strip()


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool],
                  key: Callable[[str], Hashable] | None = None) -> bool:
    """Whether the majority answer of one problem is correct.

    Samples without an extracted answer (None) do not vote. Answers are grouped by `key`
    (default: the whitespace-stripped string) so trivially different spellings vote together;
    ties go to the group seen first, which keeps the result deterministic. The group's
    correctness is that of its first sample (samples in one group are graded alike).
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_vote: {len(answers)} answers but {len(correct)} grades")
    key = _strip if key is None else key
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for j, ans in enumerate(answers):
        if ans is None:
            continue
        g = key(ans)
        counts[g] = counts.get(g, 0) + 1
        first.setdefault(g, j)
    if not counts:
        return False
    # max() returns the first maximal item; dicts keep first-occurrence order.
    winner = max(counts, key=counts.__getitem__)
    return bool(correct[first[winner]])


def maj_at_k(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]],
             key: Callable[[str], Hashable] | None = None) -> float:
    """Mean over problems of `majority_vote` (maj@n)."""
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answer rows but {len(correct)} grade rows")
    if len(answers) == 0:
        raise ValueError("no problems: the answer table is empty")
    for i, (a_row, c_row) in enumerate(zip(answers, correct)):
        if len(a_row) != len(c_row):
            raise ValueError(f"problem row {i}: {len(a_row)} answers but {len(c_row)} grades")
    return sum(majority_vote(a, c, key) for a, c in zip(answers, correct)) / len(answers)


def macro_average(scores: Mapping[str, float]) -> float:
    """Unweighted mean over benchmarks, as the paper's "Avg." column (small sets weigh the same)."""
    if len(scores) == 0:
        raise ValueError("macro_average: no benchmark scores")
    return math.fsum(scores.values()) / len(scores)


def bootstrap_ci(per_problem: Sequence[float], *, n_boot: int = 10000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling problems (the unit of variation).

    Sampling noise of the n completions is already averaged into each per-problem value;
    what varies between benchmarks of the same difficulty is which problems were drawn.
    """
    x = np.asarray(per_problem, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of per-problem values")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci needs n_boot >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci needs 0 < alpha < 1, got {alpha}")
    n = x.size
    if n == 1 or x.min() == x.max():
        # Every resample has the same mean; return it exactly rather than with rounding noise.
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def _sign_flip_p_value(d: np.ndarray, n_boot: int, seed: int) -> float:
    """Two-sided paired permutation test: under H0 each difference's sign is a coin flip."""
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(n_boot, d.size)) * 2 - 1
    observed = abs(d.mean())
    permuted = np.abs((signs * d).mean(axis=1))
    extreme = int(np.count_nonzero(permuted >= observed - _PERM_TOL))
    return (1 + extreme) / (1 + n_boot)


@dataclass
class PairedComparison:
    """Run b versus run a on the same problems; diff and its CI are b - a."""

    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_problems: int
    wins_b: int
    wins_a: int
    ties: int
    n_dropped: int


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float], *, n_boot: int = 10000,
                      alpha: float = 0.05, seed: int = 0) -> PairedComparison:
    """Compare two runs problem by problem (paired), which is far tighter than two separate CIs.

    Only problem ids present in both runs are used, in sorted id order (so the result does not
    depend on dict order); `n_dropped` counts ids present in only one run. The CI is the
    bootstrap CI of the per-problem differences (`bootstrap_ci`, same seed); the p-value is a
    sign-flip permutation test with its own `default_rng(seed)`.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("paired_comparison: the two runs share no problem ids")
    n_dropped = len(set(a) ^ set(b))
    xa = np.array([a[i] for i in common], dtype=float)
    xb = np.array([b[i] for i in common], dtype=float)
    d = xb - xa
    ci_low, ci_high = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)
    return PairedComparison(
        mean_a=float(xa.mean()),
        mean_b=float(xb.mean()),
        diff=float(d.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=float(_sign_flip_p_value(d, n_boot, seed)),
        n_problems=len(common),
        wins_b=int(np.count_nonzero(xb > xa)),
        wins_a=int(np.count_nonzero(xa > xb)),
        ties=int(np.count_nonzero(xa == xb)),
        n_dropped=n_dropped,
    )


def summarize(correct: Sequence[Sequence[bool]],
              answers: Sequence[Sequence[str | None]] | None = None, *, seed: int = 0,
              n_boot: int = 10000) -> dict:
    """All metrics of one benchmark run as a JSON-able dict (plain floats/ints, str keys).

    Keys: avg_at_n, n (shortest row), n_max (only when rows differ), num_problems,
    pass_at_k ({"1": ..., "2": ...}), maj_at_n (only with answers), ci_low, ci_high
    (bootstrap CI of avg_at_n).
    """
    acc = per_problem_accuracy(correct)
    lengths = [len(row) for row in correct]
    out: dict = {
        "avg_at_n": math.fsum(acc) / len(acc),
        "n": min(lengths),
    }
    if max(lengths) != min(lengths):
        out["n_max"] = max(lengths)
    out["num_problems"] = len(correct)
    out["pass_at_k"] = {str(k): float(v) for k, v in pass_at_k_table(correct).items()}
    if answers is not None:
        out["maj_at_n"] = float(maj_at_k(answers, correct))
    out["ci_low"], out["ci_high"] = bootstrap_ci(acc, n_boot=n_boot, seed=seed)
    return out


def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import t  # scipy comes with mlflow; only the seed statistics need it

    return float(t.ppf(q, df))


@dataclass
class SeedSummary:
    """One method's score over independent runs: the mean, the sample SD and Student's t CI.

    With one run there is no spread: `sd` and `ci` are None (not zero)."""

    n: int
    mean: float
    sd: float | None
    ci: tuple[float, float] | None


def seed_summary(values: Sequence[float], *, alpha: float = 0.05) -> SeedSummary:
    """Mean over runs (seeds) with the t interval mean -+ t_{1-alpha/2, n-1} * s / sqrt(n).

    The unit of variation is the run: the problems are the same in every run, so this CI says how
    far another seed could land, which a bootstrap over one run's problems cannot."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("seed_summary needs a non-empty 1-D sequence of per-run scores")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"seed_summary needs 0 < alpha < 1, got {alpha}")
    mean = float(x.mean())
    if x.size == 1:
        return SeedSummary(1, mean, None, None)
    sd = float(x.std(ddof=1))
    half = _t_quantile(1 - alpha / 2, x.size - 1) * sd / math.sqrt(x.size) if sd > 0 else 0.0
    return SeedSummary(int(x.size), mean, sd, (mean - half, mean + half))


@dataclass
class SeedDifference:
    """Method b versus method a over their runs (Welch); diff and its CI are b - a."""

    diff: float
    ci: tuple[float, float]
    df: float | None
    n_a: int
    n_b: int


def welch_difference(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> SeedDifference:
    """Difference of two methods' mean scores over independent runs, with Welch's t interval
    (unequal variances, Welch-Satterthwaite degrees of freedom; formulas in the module doc).

    Needs at least two runs of each method. When neither method varies (both SDs 0) the CI is the
    difference itself and df is None."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    for name, x in (("a", xa), ("b", xb)):
        if x.ndim != 1 or x.size < 2:
            raise ValueError(f"welch_difference needs at least 2 runs of {name}, got {x.size}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"welch_difference needs 0 < alpha < 1, got {alpha}")
    diff = float(xb.mean() - xa.mean())
    va, vb = float(xa.var(ddof=1)) / xa.size, float(xb.var(ddof=1)) / xb.size
    se2 = va + vb
    if se2 == 0.0:
        return SeedDifference(diff, (diff, diff), None, int(xa.size), int(xb.size))
    df = se2 ** 2 / (va ** 2 / (xa.size - 1) + vb ** 2 / (xb.size - 1))
    half = _t_quantile(1 - alpha / 2, df) * math.sqrt(se2)
    return SeedDifference(diff, (diff - half, diff + half), float(df), int(xa.size), int(xb.size))
