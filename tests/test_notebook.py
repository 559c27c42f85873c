"""notebooks/compare_runs.py (a jupytext percent notebook) executed cell by cell in a real
Jupyter kernel (nbclient) against the MLflow server of this test session, on two real runs of
the Metaflow pipeline: the session's shared tiny Prefix-RFT run (conftest.py `happy_flow`, also
used by tests/test_pipeline.py) and a tiny SFT run made here, both in one experiment.

The parameters are injected as papermill does: a cell tagged `injected-parameters` right after
the cell tagged `parameters`. A cell that raises fails the test with its traceback; every cell
tagged `table` must show a table with rows and every cell tagged `figure` a PNG, and the tables
must hold what the two runs logged.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "compare_runs.py"


def read_notebook():
    import jupytext

    return jupytext.read(NOTEBOOK)


def tagged(nb, tag: str) -> list:
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def inject_parameters(nb, **params):
    """papermill's convention: the values go into a new cell after the `parameters` cell."""
    import nbformat

    (cell,) = tagged(nb, "parameters")
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    new = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(nb.cells.index(cell) + 1, new)
    return nb


def parameters(nb) -> dict:
    (cell,) = tagged(nb, "parameters")
    values: dict = {}
    exec(cell.source, {}, values)
    return values


def test_notebook_parameters_default_to_what_make_demo_writes():
    nb = read_notebook()
    p = parameters(nb)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert p["experiment"] == demo["tracking"]["experiment"]
    assert p["tracking_uri"] == "sqlite:///mlflow.db"  # `make demo`: ./mlflow.db
    assert p["run_ids"] == [] and p["epoch"] == "last"
    assert len(tagged(nb, "table")) == 6 and len(tagged(nb, "figure")) == 2


def test_notebook_script_is_in_jupytext_canonical_form():
    """Saving from Jupyter (jupytext) rewrites nothing, so diffs show only real changes."""
    import jupytext

    assert jupytext.writes(read_notebook(), fmt="py:percent") == NOTEBOOK.read_text()


# ---------------------------------------------------------------------------- executed
@pytest.fixture(scope="module")
def two_runs(happy_flow, local_servers, smollm2_dir, tmp_path_factory):
    """(prefix_rft run id, sft run id) in flow_runs.SHARED_EXPERIMENT: the shared happy run and
    a tiny SFT run (2 SFT steps in 1 epoch, evaluated; ~30 s on 2 idle cores)."""
    from tests import flow_runs

    assert happy_flow["status"] == "successful", happy_flow["out"][-3000:]
    root = tmp_path_factory.mktemp("sft")
    cfg = flow_runs.tiny_config(smollm2_dir, root, experiment=flow_runs.SHARED_EXPERIMENT, **{
        "method": "sft", "rl.steps": 0, "sft.epochs": 1, "sft.batch_size": 8,
        "pipeline.epochs": 1, "pipeline.eval_base": False, "tracking.registered_model": None})
    run, status, out = flow_runs.run_flow(cfg["path"], flow_runs.flow_env(local_servers, root),
                                          root)
    assert status == "successful", out[-3000:]
    flow_runs.namespace(None)
    ids = [r["start"].task.data.tracking["run_id"] for r in (happy_flow["run"], run)]
    return tuple(ids)


def body_rows(html: str) -> int:
    body = re.search(r"<tbody>(.*?)</tbody>", html, re.S)
    return body.group(1).count("<tr") if body else 0


@pytest.mark.slow
def test_notebook_runs_every_cell_against_real_runs(two_runs, local_servers):
    from nbclient import NotebookClient

    prefix_id, sft_id = two_runs
    nb = inject_parameters(read_notebook(), tracking_uri=local_servers.mlflow_uri,
                           experiment="pipeline-shared-runs", baseline="sft", n_boot=2000)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        if os.environ.get("PREFIX_RFT_NOTEBOOK_OUT"):  # keep the executed notebook to look at
            import nbformat

            nbformat.write(nb, os.environ["PREFIX_RFT_NOTEBOOK_OUT"])

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    tables = {}
    for c in tagged(nb, "table"):
        html = [o["data"]["text/html"] for o in c.outputs if "text/html" in o.get("data", {})]
        assert len(html) == 1 and body_rows(html[0]) > 0, f"no table or more in cell:\n{c.source}"
        tables[c.source.splitlines()[0]] = html[0]
    for c in tagged(nb, "figure"):
        png = [o["data"]["image/png"] for o in c.outputs if "image/png" in o.get("data", {})]
        assert png and len(base64.b64decode(png[-1])) > 5000, f"no figure in cell:\n{c.source}"

    listing, chosen, evaluation, by_method, paired, samples = tables.values()
    # the experiment's two runs, their methods; each compared at its last epoch (2 and 1)
    assert body_rows(listing) == 2 and prefix_id in listing and sft_id in listing
    assert "prefix_rft" in listing and "sft" in listing
    assert body_rows(chosen) == 2
    # held-out: one row per run with a CI; then the prefix_rft run minus the sft baseline
    assert body_rows(evaluation) == 2 and "heldout" in evaluation
    # one run per method: a row each, no CI over runs
    assert body_rows(by_method) == 2 and "<td>prefix_rft</td>" in by_method and "<td>sft</td>" in by_method
    assert body_rows(paired) == 1 and "prefix_rft-" in paired
    assert re.search(r"<td>sft-\d+</td>", paired)  # the baseline column
    assert body_rows(samples) == 2 * 3  # 3 of the 4 held-out problems, side by side


@pytest.mark.slow
def test_compare_cli_reads_the_same_pipeline_runs(two_runs, local_servers, capsys):
    from prefix_rft.cli import main

    prefix_id, sft_id = two_runs
    assert main(["compare", f"mlflow:{sft_id}", f"mlflow:{prefix_id}",
                 "--tracking-uri", local_servers.mlflow_uri]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| benchmark \| sft-\d+@epoch1 \(95% CI\) \| prefix_rft-\d+@epoch2", out)
    assert "| heldout |" in out
