"""The study's result tables (Markdown, for docs/RESULTS.md) from the summary.json files that
studies/study.sh writes (one row per run: config, method, seed, card, date, MLflow run id,
scores per epoch and level with the bootstrap CI).

    python studies/study_table.py round1/summary.json round2/summary.json > table.md
    python studies/study_table.py round1/summary.json round2/summary.json \
        --db round1/mlflow.db --db round2/mlflow.db \
        --curves docs/figures/study_curves.png      # + the training curves of those runs

Prints (1) one row per run with the command that reproduces it and its final-epoch score per level
(avg@n [95% bootstrap CI over problems]), (2) per method: the mean over seeds per level with the
spread (min-max), each seed's mean of levels, and their mean with Student's t 95% CI over seeds
and the SD (`eval_metrics.seed_summary`), (3) the reference method (`--reference`, default
prefix_rft) minus every other method with at least two seeds: per level and for the mean of
levels, with Welch's 95% CI over seeds (`eval_metrics.welch_difference`). A run listed twice (the
same MLflow run id in two files) is counted once; failed runs (rc != 0 or no scores) are listed
apart.

The levels are a parameter (`--levels a,b,c`, default the three synthetic ones), so other
studies with other benchmarks (studies/realmath_table.py) print the same tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefix_rft.errors import UserError  # noqa: E402
from prefix_rft.eval import metrics as em  # noqa: E402

LEVELS = ("synthetic_add", "synthetic_mul", "synthetic_word")
CURVES = ("reward/mean", "reward/policy_mean", "demo/nll", "loss", "prefix/advantage")
ORDER = ("base", "sft", "rft", "sft_then_rft", "luffy", "relift", "prefix_rft", "freeze_prefix",
         "update_all_prefix")


def _order(method: str | None) -> int:
    """A method's place in ORDER (unknown methods last)."""
    return ORDER.index(method) if method in ORDER else len(ORDER)


ROW_KEYS = ("config", "date", "rc", "card")  # what every summary row has (study.sh writes them)


def read_rows(path) -> list[dict]:
    """One summary.json's rows; a file that is not a list of study rows is a UserError naming it."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable summary.json ({e})") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a list of run rows, got {type(rows).__name__}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(f"{path}: row {i} is a {type(r).__name__}, not a run row")
        if missing := [k for k in ROW_KEYS if k not in r]:
            raise UserError(f"{path}: row {i} lacks {', '.join(missing)}")
        if not isinstance(r.get("scores") or {}, dict):
            raise UserError(f"{path}: row {i}: scores is not a mapping")
    return rows


def load(paths) -> list[dict]:
    rows, seen = [], set()
    for p in paths:
        for r in read_rows(p):
            key = r.get("mlflow_run_id") or (r["config"], r.get("seed"), r["date"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
    return rows


def final(row: dict, level: str) -> dict | None:
    by_epoch = row.get("scores", {}).get(level) or {}
    trained = [e for e in by_epoch if int(e) >= 1]
    return by_epoch[max(trained, key=int)] if trained else None


def base_score(row: dict, level: str) -> dict | None:
    return (row.get("scores", {}).get(level) or {}).get("0")


def _cell(s: dict | None) -> str:
    if s is None:
        return "-"
    lo, hi = s["ci"]
    return f"{s['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{s['value']:.3f}"


def command(row: dict) -> str:
    seed = f":{row['seed']}" if row.get("seed") is not None else ""
    extra = f"STUDY_SET='{row['set']}' " if row.get("set") else ""
    return f"`{extra}bash studies/study.sh {row['config']}{seed}`"


def succeeded(rows: list[dict]) -> list[dict]:
    """The runs with results (rc 0 and scores), in method order, then seed, then date."""
    ok = [r for r in rows if r.get("rc") == 0 and r.get("scores")]
    return sorted(ok, key=lambda r: (_order(r.get("method")), r.get("seed") or 0, r["date"]))


def tables(rows: list[dict], reference: str = "prefix_rft", levels=LEVELS, command=command,
           noun: str = "levels") -> str:
    """The per-run table (`command(row)` reproduces a row), then `seed_tables`; `levels` are the
    score columns, `noun` names them in the headers."""
    ok = succeeded(rows)
    bad = [r for r in rows if r not in ok]
    out = ["| method | seed | " + " | ".join(f"{lv} final" for lv in levels)
           + " | card | date (UTC) | MLflow run id | command |",
           "|" + "---|" * (len(levels) + 6)]
    for r in ok:
        out.append(f"| {r.get('method')} | {r.get('seed')} | "
                   + " | ".join(_cell(final(r, lv)) for lv in levels)
                   + f" | {r['card']} | {r['date'][:16].replace('T', ' ')} | "
                   f"`{r['mlflow_run_id']}` | {command(r)} |")
    bases = [r for r in ok if all(base_score(r, lv) for lv in levels)]
    if bases:
        b = bases[0]
        out.append(f"| (untrained, epoch 0 of {b.get('method')} seed {b.get('seed')}) | - | "
                   + " | ".join(_cell(base_score(b, lv)) for lv in levels)
                   + f" | {b['card']} | {b['date'][:16].replace('T', ' ')} | "
                   f"`{b['mlflow_run_id']}` | {command(b)} |")
    out += ["", *seed_tables(ok, reference, levels, noun)]
    if bad:
        out += ["", "Runs without results:"]
        out += [f"- {r['config']} seed {r.get('seed')}: rc {r.get('rc')}, "
                f"{r.get('summary_error') or r.get('status') or 'no scores'} ({r['date']})"
                for r in bad]
    return "\n".join(out) + "\n"


def _macro(row: dict, levels=LEVELS) -> float | None:
    """A run's mean of the levels' final scores (None when a level is missing)."""
    vals = [final(row, lv) for lv in levels]
    return sum(v["value"] for v in vals) / len(vals) if all(vals) else None


def _scores(runs: list[dict], level: str | None, levels=LEVELS) -> list[float]:
    """The runs' final scores on `level` (None: their mean of `levels`), runs lacking it left out."""
    if level is None:
        return [x for r in runs if (x := _macro(r, levels)) is not None]
    return [s["value"] for r in runs if (s := final(r, level))]


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]"


def by_method(ok: list[dict]) -> dict[str, list[dict]]:
    """method -> its runs in seed order, methods in ORDER."""
    methods = sorted({r.get("method") for r in ok}, key=_order)
    return {m: sorted((r for r in ok if r.get("method") == m), key=lambda r: r.get("seed") or 0)
            for m in methods}


def seed_tables(ok: list[dict], reference: str, levels=LEVELS, noun: str = "levels") -> list[str]:
    """Per method over its seeds; then `reference` minus each other method (Welch, over seeds)."""
    runs = by_method(ok)
    methods = list(runs)
    out = ["| method | seeds | " + " | ".join(levels) + f" | mean of {noun}, per seed "
           f"| mean of {noun} [95% CI over seeds] | SD |", "|" + "---|" * (len(levels) + 5)]
    for m in methods:
        cells = []
        for lv in levels:
            vals = _scores(runs[m], lv)
            spread = f" ({min(vals):.3f}-{max(vals):.3f})" if len(vals) > 1 else ""
            cells.append(f"{sum(vals) / len(vals):.3f}{spread}" if vals else "-")
        macros = _scores(runs[m], None, levels)
        if macros:
            s = em.seed_summary(macros)
            per_seed = ", ".join(f"{x:.3f}" for x in macros)
            ci = f"{s.mean:.3f} [{s.ci[0]:.3f}, {s.ci[1]:.3f}]" if s.ci else f"{s.mean:.3f}"
            sd = f"{s.sd:.3f}" if s.sd is not None else "-"
        else:
            per_seed = ci = sd = "-"
        out.append(f"| {m} | {len(runs[m])} | " + " | ".join(cells)
                   + f" | {per_seed} | {ci} | {sd} |")
    ref = runs.get(reference, [])
    others = [m for m in methods if m != reference and len(runs[m]) >= 2]
    if len(ref) < 2 or not others:
        return out
    out += ["", f"{reference} minus each method (difference of the means over seeds, Welch 95% CI; "
            f"> 0: {reference} higher):", "",
            "| method | seeds | " + " | ".join(levels) + f" | mean of {noun} | CI excludes 0 |",
            "|" + "---|" * (len(levels) + 4)]

    for m in others:
        cells, verdict = [], "-"
        for lv in (*levels, None):
            a, b = _scores(runs[m], lv, levels), _scores(ref, lv, levels)
            if len(a) < 2 or len(b) < 2:
                cells.append("-")
                continue
            d = em.welch_difference(a, b)
            cells.append(f"{d.diff:+.3f} {_ci(*d.ci)}")
            if lv is None:
                verdict = ("yes: " + (f"{reference} higher" if d.ci[0] > 0 else f"{m} higher")
                           if d.ci[0] > 0 or d.ci[1] < 0 else "no")
        out.append(f"| {m} | {len(runs[m])} vs {len(ref)} | " + " | ".join(cells) + f" | {verdict} |")
    return out


class CurveSource:
    """Where `curves` reads a run's training metrics. `histories(run_id, keys)`: metric ->
    [(step, value)] for those of `keys` the run logged, or None when the run is not in this
    source; `name` says where that is, for messages."""

    name = "?"

    def histories(self, run_id: str, keys) -> dict[str, list[tuple[int, float]]] | None:
        raise NotImplementedError


class MlflowCurves(CurveSource):
    """The sqlite MLflow files that study.sh returns (one per round: a run is read from the
    first file that has it)."""

    def __init__(self, dbs: list[str]):
        self.dbs = list(dbs)
        self.name = ", ".join(map(str, self.dbs))
        self._trackers = None

    def histories(self, run_id: str, keys) -> dict[str, list[tuple[int, float]]] | None:
        from prefix_rft.io.tracking import Tracker

        if self._trackers is None:
            for db in self.dbs:
                if not Path(db).is_file():
                    raise UserError(f"--db {db}: no such file")
            self._trackers = [Tracker(f"sqlite:///{Path(db).resolve()}", check=False)
                              for db in self.dbs]
        for t in self._trackers:
            try:
                t.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - not in this file
                continue
            return {k: h for k in keys if (h := t.metric_history(run_id, k))}
        return None


def curves(rows: list[dict], sources: list[CurveSource], out: str, keys=CURVES) -> None:
    """Reward (all members; policy samples only), demo NLL, loss and prefix advantage over training
    steps: per method the mean over its seeds with a min-max band
    (`prefix_rft.eval.report.training_curves_figure` with groups), for the runs of `rows` with
    results; each run's metrics from the first of `sources` that has it (`MlflowCurves`: the
    MLflow files; studies/realmath_table.py adds committed steps files). A run in none of them
    is a UserError."""
    from prefix_rft.eval import report

    ok = [r for r in rows if r.get("rc") == 0 and r.get("mlflow_run_id")]

    def history(run_id: str) -> dict:
        for source in sources:
            if (h := source.histories(run_id, keys)) is not None:
                return h
        raise UserError(f"MLflow run {run_id} is in none of "
                        f"{'; '.join(s.name for s in sources) or 'no curve source'}")

    ok.sort(key=lambda r: _order(r.get("method")))
    labels = {f"{r.get('method')} s{r.get('seed')}": r for r in ok}
    hist = {label: history(r["mlflow_run_id"]) for label, r in labels.items()}
    groups = {label: r.get("method") for label, r in labels.items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    report.training_curves_figure(hist, keys, groups=groups, max_columns=3).savefig(out, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", help="summary.json files from study.sh")
    ap.add_argument("--db", action="append", default=[],
                    help="an mlflow.db holding those runs (for --curves; repeat for several rounds)")
    ap.add_argument("--curves", help="write the training-curves figure (PNG) here")
    ap.add_argument("--reference", default="prefix_rft",
                    help="the method the difference table compares every other method with")
    ap.add_argument("--levels", type=levels_arg, default=LEVELS,
                    help=f"comma-separated score columns (default {','.join(LEVELS)})")
    args = ap.parse_args(argv)
    if args.curves and not args.db:
        ap.error("--curves needs --db")
    try:
        rows = load(args.summaries)
        sys.stdout.write(tables(rows, args.reference, args.levels))
        if args.curves:
            curves(rows, [MlflowCurves(args.db)], args.curves)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def levels_arg(text: str) -> tuple[str, ...]:
    """`--levels a,b,c` -> ("a", "b", "c")."""
    levels = tuple(x.strip() for x in text.split(",") if x.strip())
    if not levels:
        raise argparse.ArgumentTypeError("give at least one level")
    return levels


if __name__ == "__main__":
    sys.exit(main())
