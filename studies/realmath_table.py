"""The real-math study's result tables (Markdown, for docs/RESULTS.md) from what the GPU calls
return: the summary.json files of studies/realmath.sh (one row per run, as studies/study.sh
writes them, with the scores of the flow's eval task), the per-problem sample directories
(`--samples DIR`: DIR/<config>-seed<N>/ from samples.tgz, as studies/realmath_samples.py writes
them: run.json naming the MLflow run, flow_<benchmark>/samples.parquet) and the untrained model's
evaluation directories of studies/realmath_base.sh (`--base DIR`, each an extracted
<call>_<part>.tgz).

    python studies/realmath_table.py docs/results/realmath_s*_summary.json \
        --samples docs/results/realmath_samples --base docs/results/realmath_base/b1_default ... \
        [--steps 'docs/results/realmath_s*_steps.json' --curves docs/figures/realmath_curves.png]

The training-curves figure (`--curves`) reads each run's per-step metrics from the committed
steps files of studies/realmath_steps.py (`--steps FILE`, repeatable; a quoted glob is expanded
here) and, for runs no steps file has, from MLflow files (`--db FILE`, repeatable).

Prints, in order:
  (a) the untrained model: per benchmark and protocol@max_new_tokens, avg@n with its bootstrap
      95% CI over problems, n, the number of problems and the directories it came from
      (`report.eval_table`); the real-math train part's row is the policy's own success rate on
      the training problems. realmath_base.sh's parts of a benchmark (`math500_a`, `_b`;
      `olympiadbench_a` to `_d`) are that benchmark; while some part is missing its row says
      how many problems it covers and a note names the missing parts. Where two protocols
      sample a benchmark alike (same n, temperature, top_p, seed, length: `paper` and
      `default` on AIME24/25 and AMC), a missing cell takes the other's.
  (b), (c) study_table.py's tables with the real-math benchmarks as levels: one row per run with
      its final scores and `bash studies/realmath.sh CONFIG:SEED`, per method over seeds, and the
      reference method (`--reference`, default sft_then_rft) minus every method (Welch).
  (d) paired per-problem differences on the held-out part and the four benchmarks of the
      flow's eval task: each problem's accuracy averaged over a method's seeds, minus the
      same for the reference, on the problems both have (`report.paired_table`: bootstrap CI
      of the mean difference, sign-flip p-value).
  (e) the same with the untrained model (epoch 0: the --base directories scored with the
      flow's protocols, greedy@1024 held-out and paper@1024) in the reference's place.
Missing inputs (a method with one seed, a run without its sample directory, a benchmark a run
lacks) give "-" cells and a line under "Notes"; a malformed file is one error naming it (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "studies"))
import study_table as st  # noqa: E402
from realmath_samples import RUN_FILE  # noqa: E402  # the MLflow run a sample directory belongs to
from realmath_steps import histories as steps_histories  # noqa: E402
from realmath_steps import read_steps  # noqa: E402

from prefix_rft.errors import UserError  # noqa: E402
from prefix_rft.eval import metrics as em  # noqa: E402
from prefix_rft.eval import report  # noqa: E402

# the per-run score columns and the paired table's benchmarks: the five of the flow's eval task
# (heldout greedy, the others with the paper protocol)
LEVELS = ("heldout", "aime24", "aime25", "amc", "math500")
SIX = ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")
PARTS = ("realmath_train", "realmath_heldout")  # realmath_base.sh's problems files of the source
# benchmark -> the eval labels of the problems files realmath_base.sh splits it into (the
# default protocol's MATH-500 in halves, OlympiadBench in quarters: one device call each), and
# back (not the real-math source's PARTS above)
SPLITS = {"math500": ("math500_a", "math500_b"),
          "olympiadbench": ("olympiadbench_a", "olympiadbench_b", "olympiadbench_c",
                            "olympiadbench_d")}
MERGE = {part: bench for bench, parts in SPLITS.items() for part in parts}
NAMES = {"realmath_train": "real-math train part (the policy's own success rate)",
         "realmath_heldout": "real-math held-out part"}
# the base table's protocols, in order; "greedy" is any protocol run at temperature 0 (the flow's
# held-out cell at 1,024 tokens, and greedy MATH-500 at 4,096)
PROTOCOLS = ("default@4096", "paper@4096", "paper@1024", "greedy@1024")
CURVES = (*st.CURVES, "eval/accuracy")  # + the in-training greedy held-out accuracy
SAMPLING = ("temperature", "top_p", "max_new_tokens", "seed", "grader")


def command(row: dict) -> str:
    """The call that reproduces a run: realmath.sh takes the config's name and the seed."""
    seed = f":{row['seed']}" if row.get("seed") is not None else ""
    extra = f"REALMATH_SET='{row['set']}' " if row.get("set") else ""
    return f"`{extra}bash studies/realmath.sh {Path(row['config']).stem}{seed}`"


def run_name(row: dict) -> str:
    return f"{row.get('method')} seed {row.get('seed')}"


# ------------------------------------------------------------------------------ eval directories

def read_eval_dir(d: Path) -> tuple[dict, dict[str, dict[str, float]]]:
    """An eval output directory's summary.json and its per-problem accuracies (benchmark ->
    problem id -> accuracy, `protocol.per_problem`); a missing or unreadable file is a UserError
    naming it."""
    from prefix_rft.eval.protocol import SAMPLES_FILE, SUMMARY_FILE, per_problem

    path = d / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
        benches = summary["benchmarks"]
        assert isinstance(benches, dict) and all(isinstance(s, dict) for s in benches.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise UserError(f"{path}: not a readable `prefix-rft eval` summary ({type(e).__name__}"
                        f"{': ' + str(e) if str(e) else ''})") from None
    try:
        acc = per_problem(d / SAMPLES_FILE)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types; all mean a bad file
        raise UserError(f"{d / SAMPLES_FILE}: not a readable samples file ({e})") from None
    for bench in benches:
        if bench not in acc:
            raise UserError(f"{d / SAMPLES_FILE}: no samples of {bench}, which summary.json lists")
    return summary, acc


def protocol_label(summary: dict, bench: str) -> tuple[str, dict]:
    """"name@max_new_tokens" of the protocol `bench` was scored with, and that protocol; a
    protocol decoded at temperature 0 is "greedy" whatever it was named (`--temperature 0`)."""
    prot = summary["benchmarks"][bench].get("protocol") or summary.get("protocol") or {}
    if "name" not in prot or "max_new_tokens" not in prot:
        raise UserError(f"{bench}: the summary.json records no protocol name and length")
    name = "greedy" if float(prot.get("temperature", 1.0)) == 0 else prot["name"]
    return f"{name}@{prot['max_new_tokens']}", prot


def _n_for(prot: dict, bench: str) -> int:
    return int((prot.get("n_per_benchmark") or {}).get(bench, prot.get("n", 1)))


def base_cells(dirs: list[Path]) -> tuple[dict, dict, list[str]]:
    """(protocol label, benchmark) -> {"acc", "n", "src", "parts", "missing"}: the base
    directories merged (a benchmark's parts joined: "parts" the part labels seen, "missing" those
    not seen, both empty for a whole benchmark); the protocols by label; notes (one per benchmark
    that lacks some of its parts)."""
    cells, protos, notes = {}, {}, []
    for d in dirs:
        summary, acc = read_eval_dir(d)
        for bench in summary["benchmarks"]:
            try:
                label, prot = protocol_label(summary, bench)
            except UserError as e:
                raise UserError(f"{d / 'summary.json'}: {e}") from None
            protos.setdefault(label, prot)
            name = MERGE.get(bench, bench)
            cell = cells.setdefault((label, name), {"acc": {}, "n": _n_for(prot, bench), "src": [],
                                                    "parts": set()})
            if cell["n"] != _n_for(prot, bench) or set(cell["acc"]) & set(acc[bench]):
                raise UserError(f"{d}: {bench} under {label} repeats problems or differs in n "
                                f"from {', '.join(cell['src'])}")
            cell["acc"].update(acc[bench])
            cell["src"].append(d.name)
            if bench != name:
                cell["parts"].add(bench)
    for (label, name), cell in cells.items():
        cell["missing"] = [q for q in SPLITS[name] if q not in cell["parts"]] if cell["parts"] else []
        if cell["missing"]:
            notes.append(f"base, {name} under {label}: {len(cell['acc'])} problems, from "
                         f"{', '.join(sorted(cell['parts']))}; {', '.join(cell['missing'])} not "
                         "yet run (left out of the mean of the six)")
    for (label, name), cell in list(cells.items()):  # protocols that sample a benchmark alike
        for other, prot in protos.items():
            if (other, name) not in cells and _same_samples(protos[label], prot, name):
                cells[other, name] = {**cell, "src": [f"{s} (= {label})" for s in cell["src"]]}
                notes.append(f"base, {name} under {other}: the samples of {label} (same n, "
                             "temperature, top_p, seed and length)")
    return cells, protos, notes


def _same_samples(p: dict, q: dict, bench: str) -> bool:
    return _n_for(p, bench) == _n_for(q, bench) and all(p.get(k) == q.get(k) for k in SAMPLING)


def _bench_order(name: str) -> tuple:
    known = (*SIX, *PARTS)
    return (known.index(name), "") if name in known else (len(known), name)


# the untrained model's protocol for each of the flow's cells (configs/realmath/README.md,
# "Evaluation": studies/realmath_base.sh b3 and b6 score epoch 0 exactly so)
EPOCH0 = "epoch 0"
EPOCH0_CELLS = {"heldout": ("greedy@1024", "realmath_heldout"), "aime24": ("paper@1024", "aime24"),
                "aime25": ("paper@1024", "aime25"), "amc": ("paper@1024", "amc"),
                "math500": ("paper@1024", "math500")}


def epoch0_results(cells: dict) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The untrained model's per-problem accuracies under the flow's cell names (LEVELS), from
    the base cells (`base_cells`) scored with the flow's protocols; notes on the cells without
    them."""
    out = {lv: cells[key]["acc"] for lv, key in EPOCH0_CELLS.items() if key in cells}
    notes = [f"paired differences against {EPOCH0}, {lv}: no base results under "
             f"{EPOCH0_CELLS[lv][0]}" for lv in LEVELS if lv not in out]
    return out, notes


def base_table(cells: dict, protos: dict) -> tuple[list[str], list[str]]:
    """Table (a) from `base_cells`' cells and protocols, one row per (benchmark, protocol), and
    its notes."""
    notes = []
    labels = sorted(protos, key=lambda x: (PROTOCOLS.index(x) if x in PROTOCOLS else 99, x))
    runs = [report.RunResults(lb, {b: c["acc"] for (lb2, b), c in cells.items() if lb2 == lb},
                              {b: c["n"] for (lb2, b), c in cells.items() if lb2 == lb})
            for lb in labels]
    stats = {(r["run"], r["benchmark"]): r for r in report.eval_table(runs)
             if r["benchmark"] != "macro"}
    out = ["| benchmark | protocol @ max new tokens | avg@n [95% CI] | n | problems | from |",
           "|---|---|---|---|---|---|"]
    for name in sorted({b for _, b in cells}, key=_bench_order):
        for lb in labels:
            if (s := stats.get((lb, name))) is not None:
                out.append(f"| {NAMES.get(name, name)} | {lb} | {s['avg']:.3f} "
                           f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}] | {s['n']} | {s['problems']} "
                           f"| {', '.join(cells[lb, name]['src'])} |")
    for lb in labels:
        if all((lb, b) in stats and not cells[lb, b]["missing"] for b in SIX):
            macro = em.macro_average({b: stats[lb, b]["avg"] for b in SIX})
            out.append(f"| mean of the six benchmarks | {lb} | {macro:.3f} | - | - | - |")
    missing = [lb for lb in PROTOCOLS if lb not in protos]
    if missing:
        notes.append(f"base: no results under {', '.join(missing)}")
    return out, notes


# ------------------------------------------------------------------------- sample directories

def sample_dirs(dirs: list[Path]) -> dict[str, Path]:
    """MLflow run id -> its sample directory DIR/<name>/ (the first whose run.json names the
    run), over the folders `dirs`: a name alone may be another session's run of the same config
    and seed."""
    index: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"--samples {d}: no such directory")
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            f = sub / RUN_FILE
            try:
                run_id = json.loads(f.read_text())["mlflow_run_id"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{f}: expected the JSON object studies/realmath_samples.py "
                                f"writes, with mlflow_run_id ({type(e).__name__}: {e})") from None
            index.setdefault(run_id, sub)
    return index


def sample_results(ok: list[dict], dirs: list[Path]) -> tuple[dict, list[str]]:
    """MLflow run id -> its per-problem accuracies (benchmark -> problem -> accuracy) from its
    sample directory (`sample_dirs`)."""
    index = sample_dirs(dirs)
    found, notes = {}, []
    for r in ok:
        sub = index.get(r["mlflow_run_id"])
        if sub is None:
            notes.append(f"{run_name(r)} (`{r['mlflow_run_id']}`): no --samples directory of this run")
        else:
            found[r["mlflow_run_id"]] = flow_samples(sub)
    return found, notes


def flow_samples(d: Path) -> dict[str, dict[str, float]]:
    """The per-problem accuracies of the flow's evaluations in a sample directory
    (d/flow_*/samples.parquet), under the benchmark names the files hold."""
    from prefix_rft.eval.protocol import SAMPLES_FILE, per_problem

    out: dict[str, dict[str, float]] = {}
    for path in sorted(d.glob(f"flow_*/{SAMPLES_FILE}")):
        try:
            out.update(per_problem(path))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types; all mean a bad file
            raise UserError(f"{path}: not a readable samples file ({e})") from None
    return out


def seed_average(per_run: list[dict[str, float]]) -> dict[str, float]:
    """Problem id -> its accuracy averaged over runs, on the problems every run has."""
    common = set.intersection(*(set(a) for a in per_run))
    return {p: sum(a[p] for a in per_run) / len(per_run) for p in sorted(common)}


def paired_tables(ok: list[dict], samples: dict, reference: str,
                  levels: tuple[str, ...] = LEVELS) -> tuple[list[str], list[str]]:
    """Table (d): per benchmark (`levels`: the held-out part, then the four others) and method,
    the seed-averaged per-problem accuracies minus the reference's (`report.paired_table`), and
    notes on what is missing."""
    runs = st.by_method([r for r in ok if r["mlflow_run_id"] in samples])
    if reference not in runs:
        return [], [f"paired differences: no samples of {reference}"]
    notes, out = [], [
        f"| benchmark | method | seeds vs {reference} | method | {reference} | difference "
        "[95% CI] | p | problems (dropped) | method better / worse / tied |", "|" + "---|" * 9]
    for bench in levels:
        averaged, seeds = [], {}
        for m, rs in runs.items():
            per_run = [acc[bench] for r in rs if bench in (acc := samples[r["mlflow_run_id"]])]
            seeds[m] = len(per_run)
            if per_run:
                averaged.append(report.RunResults(m, {bench: seed_average(per_run)}))
        names = [r.name for r in averaged]
        if reference not in names:
            notes.append(f"paired differences, {bench}: no samples of {reference}")
            continue
        base = averaged[names.index(reference)]
        rows = {row["run"]: row for row in report.paired_table(averaged, names.index(reference))}
        for m in runs:
            if m == reference:
                continue
            row = rows.get(m)
            if row is None:
                why = f"no problem in common with {reference}" if seeds[m] else "no results"
                notes.append(f"paired differences, {bench}: {m} has {why}")
                out.append(f"| {bench} | {m} | {seeds[m]} vs {seeds[reference]} |"
                           + " - |" * 6)
                continue
            mine = next(r for r in averaged if r.name == m).per_problem[bench]
            dropped = len(set(mine) ^ set(base.per_problem[bench]))
            out.append(f"| {bench} | {m} | {seeds[m]} vs {seeds[reference]} | {row['run_avg']:.3f} "
                       f"| {row['baseline_avg']:.3f} | {row['diff']:+.3f} "
                       f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] | {row['p_value']:.3f} "
                       f"| {row['problems']} ({dropped}) | {row['run_better']} / "
                       f"{row['baseline_better']} / {row['ties']} |")
    return out, notes


# ------------------------------------------------------------------------- training curves

class StepsCurves(st.CurveSource):
    """The curves of the runs in steps files (studies/realmath_steps.py's JSON, one run each):
    the files are read when made; two files of one run must agree."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self.name = ", ".join(map(str, self.paths))
        self.runs: dict[str, tuple[Path, dict]] = {}
        for path in self.paths:
            data = read_steps(path)
            run_id, hist = data["mlflow_run_id"], steps_histories(data, str(path))
            if run_id in self.runs and self.runs[run_id][1] != hist:
                raise UserError(f"{path} and {self.runs[run_id][0]}: two different step records "
                                f"of MLflow run {run_id}")
            self.runs.setdefault(run_id, (path, hist))

    def histories(self, run_id: str, keys) -> dict[str, list[tuple[int, float]]] | None:
        if run_id not in self.runs:
            return None
        hist = self.runs[run_id][1]
        return {k: hist[k] for k in keys if hist.get(k)}


def expand(paths: list[str], what: str, *, default: str | None = None,
           dirs: bool = False) -> list[Path]:
    """The files (folders with `dirs`) an option names: each a path or a glob (quoted, so the
    shell left it); none named: `default`, a glob under the repository (or nothing). A glob
    matching nothing, or a path that does not exist, is a UserError naming the option."""
    import glob

    out = []
    for a in paths or ([str(ROOT / default)] if default else []):
        matched = [a] if Path(a).exists() or not glob.has_magic(a) else sorted(glob.glob(a))
        matched = [m for m in matched if Path(m).is_dir() == dirs and Path(m).exists()]
        if not matched:
            raise UserError(f"{what} {a}: no such {'folder' if dirs else 'file'}")
        out += [Path(m) for m in matched]
    return out


# ---------------------------------------------------------------------------------------- output

def run_notes(ok: list[dict], reference: str) -> list[str]:
    """What the per-run and per-method tables leave as "-" for the runs with results (`ok`):
    missing scores, single seeds."""
    notes = [f"{run_name(r)} (`{r['mlflow_run_id']}`): no final score on {', '.join(miss)}"
             for r in ok if (miss := [lv for lv in LEVELS if st.final(r, lv) is None])]
    runs = st.by_method(ok)
    notes += [f"{m}: {len(rs)} seed, so no CI over seeds and no Welch difference"
              for m, rs in runs.items() if len(rs) < 2]
    if len(runs.get(reference, [])) < 2 and ok:
        notes.append(f"no Welch table: the reference {reference} has fewer than 2 seeds")
    return notes


def render(rows: list[dict], sample_dirs: list[Path], base_dirs: list[Path],
           reference: str = "sft_then_rft") -> str:
    cells, protos, notes = base_cells(base_dirs)  # every base directory read once
    base, table_notes = base_table(cells, protos) if base_dirs else ([], [
        "no --base directories: no table of the untrained model"])
    notes += table_notes
    out = []
    if base:
        out += ["The untrained model (avg@n, bootstrap 95% CI over problems):", "", *base, ""]
    if rows:
        out += ["Runs (final checkpoint: heldout greedy from the flow's eval cell; aime24, aime25, "
                "amc avg@32 and math500 avg@1 at T 0.6 with the `paper` protocol, all from the "
                "flow's eval task):", "",
                st.tables(rows, reference, LEVELS, command, "benchmarks").rstrip("\n"), ""]
        ok = st.succeeded(rows)
        notes += run_notes(ok, reference)
        samples, sample_notes = sample_results(ok, sample_dirs)
        paired, paired_notes = paired_tables(ok, samples, reference)
        notes += sample_notes + paired_notes
        if paired:
            out += [f"Each method minus {reference}, problem by problem (accuracy averaged over "
                    "seeds; bootstrap 95% CI over problems, sign-flip p; > 0: the method higher):",
                    "", *paired, ""]
        epoch0, e0_notes = epoch0_results(cells)
        if epoch0:  # the untrained model as one more "method" with one seed
            pseudo = {"method": EPOCH0, "mlflow_run_id": EPOCH0, "seed": 0}
            moved, moved_notes = paired_tables([*ok, pseudo], {**samples, EPOCH0: epoch0}, EPOCH0,
                                               tuple(lv for lv in LEVELS if lv in epoch0))
            notes += e0_notes + moved_notes
            if len(moved) > 2:  # header and rule, then at least one row
                out += [f"Each method minus the untrained model ({EPOCH0}, the same protocols: "
                        "did training move it?), problem by problem as above:", "", *moved, ""]
    else:
        notes.append("no run rows: no per-run, per-method or paired tables")
    if notes:
        out += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="*", help="summary.json files from studies/realmath.sh")
    ap.add_argument("--samples", action="append", default=[], type=Path,
                    help="a folder of sample directories (<config>-seed<N>/, from samples.tgz); "
                    "repeatable")
    ap.add_argument("--base", action="append", default=[], type=Path,
                    help="an eval output dir of studies/realmath_base.sh; repeatable")
    ap.add_argument("--reference", default="sft_then_rft",
                    help="the method every other method is compared with")
    ap.add_argument("--steps", action="append", default=[],
                    help="a steps file of studies/realmath_steps.py (or a quoted glob of them), "
                    "for --curves; repeatable")
    ap.add_argument("--db", action="append", default=[],
                    help="an mlflow.db holding runs that no --steps file has (for --curves; "
                    "repeatable)")
    ap.add_argument("--curves", help="write the training-curves figure (PNG) here")
    args = ap.parse_args(argv)
    if args.curves and not (args.steps or args.db):
        ap.error("--curves needs --steps or --db")
    try:
        rows = st.load(args.summaries)
        sources = []  # read before the tables are printed: a bad steps file stops it all
        if args.curves:
            sources = ([StepsCurves(expand(args.steps, "--steps"))] if args.steps else []) + \
                ([st.MlflowCurves(args.db)] if args.db else [])
        sys.stdout.write(render(rows, args.samples, args.base, args.reference))
        if args.curves:
            st.curves(rows, sources, args.curves, CURVES)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
