# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Compare pipeline runs
#
# The training runs of one MLflow experiment side by side: which runs there are (method and key
# settings), their training curves, the evaluation table with bootstrap 95% confidence
# intervals, each method over its runs (seeds) with t intervals, the paired differences between
# runs (problem by problem, on the problems both runs evaluated), and sample completions.
#
# Each run is one pipeline run (`flows/prefix_rft_flow.py`): a parent MLflow run with the
# training metrics (`step` = training step) and one child run per evaluated (epoch, benchmark)
# whose `samples.parquet` artifact holds every graded sample. The logic lives in
# `prefix_rft/eval/report.py` (tables, figures) and `prefix_rft/io/tracking.py` (reading MLflow), with
# the names of the run layout in `prefix_rft/io/run_layout.py`; this notebook only shows it. Every table and figure cell fails with a message naming what was empty.
#
# Open it with jupytext (`notebooks/README.md`), set the parameters below, run all cells.

# %% tags=["parameters"]
tracking_uri = "sqlite:///mlflow.db"  # what `make demo` writes; "" = $MLFLOW_TRACKING_URI
experiment = "prefix-rft-demo"  # tracking.experiment of configs/demo.yaml
max_runs = 10  # list the newest runs of the experiment
run_ids = []  # compare these runs (ids); empty: every listed run whose status is in `statuses`
statuses = ["FINISHED"]
epoch = "last"  # which evaluation of each run: "last", "best" (tag best_epoch) or an epoch number
baseline = ""  # run id, run name or method that the others are compared to; "" = the oldest run
curves = []  # training metrics to plot; empty = prefix_rft.io.run_layout.TRAINING_CURVES
group_by_method = True  # when a method has several runs (seeds): one curve per method, min-max band
n_boot = 10000  # bootstrap resamples (CIs) and sign flips (p-values)
seed = 0
sample_problems = 3  # problems per benchmark shown in the sample completions
completion_chars = 600

# %%
import io
import os
import sys
import warnings
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
ROOT = Path.cwd() if (Path.cwd() / "prefix_rft").is_dir() else Path.cwd().parent
if str(ROOT) not in sys.path:  # the repository's package, also when it is not installed
    sys.path.insert(0, str(ROOT))

from prefix_rft.errors import UserError
from prefix_rft.eval import report
from prefix_rft.io import run_layout
from prefix_rft.io.tracking import Tracker, run_record


def show_table(rows, what, **fmt):
    """Display `rows` (a list of dicts) as a table; an empty one is an error naming `what`."""
    if not rows:
        raise UserError(f"{what}: the table is empty")
    df = pd.DataFrame(rows)
    with pd.option_context("display.max_colwidth", None, "display.max_columns", None,
                           "display.float_format", "{:.4f}".format):
        display(df)
    return df


def show_figure(fig, what):
    """Display a matplotlib Figure as a PNG; a figure with nothing drawn is an error."""
    if not any(ax.lines or ax.patches or ax.collections for ax in fig.axes):
        raise UserError(f"{what}: the figure is empty")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    display(Image(buf.getvalue()))


uri = report.locate_tracking_uri(tracking_uri, [Path.cwd(), ROOT])
tracker = Tracker(uri)
print(f"MLflow {uri}, experiment {experiment!r}")

# %% [markdown]
# ## Runs
#
# The newest top-level runs of the experiment (one per training lineage), with the method and
# the key settings (the flattened config is in each run's params).

# %% tags=["table"]
listed = tracker.pipeline_runs(experiment, max_runs=max_runs)
if not listed:
    raise UserError(f"no runs in experiment {experiment!r} at {uri}")
overview = show_table(report.runs_overview(listed), f"runs of experiment {experiment!r}")

# %% [markdown]
# The runs compared below (oldest first) and the evaluation of each that is used.

# %% tags=["table"]
if run_ids:
    by_id = {r["run_id"]: r for r in listed}
    chosen = [by_id.get(i) or run_record(tracker.run_info(i)) for i in run_ids]
else:
    chosen = [r for r in reversed(listed) if r["status"] in statuses]
labels = report.run_labels(chosen)
compared, records = [], []
for label, rec in zip(labels, chosen):
    try:
        res = report.load_pipeline_run(tracker, rec, epoch=epoch, name=label, samples=True)
    except UserError as e:
        if run_ids:
            raise
        print(f"skipped {label}: {e}")  # e.g. a run that never got to its evaluation
        continue
    if not res.per_problem:
        print(f"skipped {label}: no complete evaluation at epoch {res.epoch}")
        continue
    compared.append(res)
    records.append(rec)
selection = show_table([{"run": r.name, "run_id": r.run_id, "method": r.method, "epoch": r.epoch,
                         "benchmarks": ", ".join(sorted(r.per_problem)),
                         "left out (shards missing)": ", ".join(r.incomplete)} for r in compared],
                       f"runs with evaluations in experiment {experiment!r} (statuses {statuses})")

# %% [markdown]
# ## Training curves
#
# x = training step (SFT and RL steps both count). A panel appears when at least one run logged
# the metric (`reward/mean`, `prefix/advantage`: RL methods; `demo/nll`: methods with
# demonstrations). When some method has several runs (seeds) and `group_by_method` is on, each
# method is one line, the mean of its runs, with a band from their lowest to their highest value.

# %% tags=["figure"]
keys = curves or run_layout.TRAINING_CURVES
histories = report.training_histories(tracker, records, keys)
methods = {r.name: r.method or r.name for r in compared}
groups = methods if group_by_method and len(set(methods.values())) < len(methods) else None
show_figure(report.training_curves_figure(histories, keys, groups=groups), "training curves")

# %% [markdown]
# ## Evaluation
#
# avg@n per benchmark: the mean over problems of the per-problem accuracy over its n samples;
# 95% CI: percentile bootstrap over problems (`prefix_rft.eval.metrics.bootstrap_ci`).

# %% tags=["table"]
evaluation = show_table(report.eval_table(compared, n_boot=n_boot, seed=seed), "evaluation table")

# %% tags=["figure"]
show_figure(report.comparison_figure(compared, n_boot=n_boot, seed=seed), "evaluation figure")

# %% [markdown]
# ## Methods over runs
#
# The runs of each method (its seeds) pooled: per benchmark each run's avg@n, their mean and
# Student's t 95% CI over runs (`prefix_rft.eval.metrics.seed_summary`). The CI says where
# another seed could land, which the bootstrap over one run's problems cannot. A method with one
# run has no SD or CI.

# %% tags=["table"]
by_method = show_table(report.method_table(compared), "methods over runs")

# %% [markdown]
# ## Paired differences
#
# Each run minus the baseline on the problems both evaluated
# (`prefix_rft.eval.metrics.paired_comparison`): the mean per-problem difference, its bootstrap
# 95% CI, a two-sided sign-flip permutation p-value, and on how many problems each did better.
# A `baseline` that names none of the compared runs (e.g. a method with no run yet) is an error
# listing the runs there are.

# %% tags=["table"]
base = report.find_run(records, baseline) if baseline else 0  # no such run: says so first
if len(compared) < 2:
    raise UserError(f"paired differences need two runs with evaluations; experiment "
                    f"{experiment!r} has {len(compared)}")
display(Markdown(f"Baseline: **{compared[base].name}** ({compared[base].method})"))
paired = show_table(report.paired_table(compared, base, n_boot=n_boot, seed=seed),
                    f"paired differences to {compared[base].name} (no benchmark in common?)")

# %% [markdown]
# ## Sample completions
#
# The first sample of a few problems that every run evaluated (problems the runs disagree on
# first), each run's completion side by side.

# %% tags=["table"]
samples = show_table(report.sample_rows(compared, problems=sample_problems,
                                        chars=completion_chars), "sample completions")
