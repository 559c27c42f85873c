"""Deployment and environments: the pinned set of versions (constraints.txt, the GPU overrides,
environment.yml, pyproject), the Metaflow profiles, and the Argo Workflows deployment compiled
offline (`argo-workflows create --only-json` through infra/metaflow/compile_argo.py).

Dependency churn fails here: an installed version that differs from constraints.txt, a GPU pin
that drifts from pyproject's [gpu] extra, an environment.yml pin that differs from the GPU set.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from prefix_rft.core.config import NON_TRAINING_SECTIONS, Config, keys_text, load_config
from prefix_rft.errors import UserError
from steps.common import RunContext
from steps.flow_config import FlowConfig, flow_config_parser, load_flow_config, resolve_flow
from steps.flow_config import main as flow_config_main
from steps.start import experiment_name, registered_model_name

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "prefix_rft_flow.py"
PAPER_7B = ROOT / "configs" / "paper" / "qwen2.5-math-7b.yaml"
MULTINODE_FLOW = ROOT / "flows" / "prefix_rft_multinode_flow.py"
PROFILES = ROOT / "infra" / "metaflow"
CORE = ("torch", "transformers", "vllm", "metaflow", "mlflow", "math-verify", "boto3", "datasets", "s3fs")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


gpuc = _load(ROOT / "infra" / "docker" / "gpu_constraints.py", "infra_gpu_constraints")
compile_argo = _load(PROFILES / "compile_argo.py", "infra_compile_argo")
norm = gpuc.normalize


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def exact_pins(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        req = Requirement(r)
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            out[norm(req.name)] = specs[0].version
    return out


# -------------------------------------------------------------------------------------------
# The pinned set


def test_installed_versions_equal_constraints():
    """The test environment is the tested set: every pin of constraints.txt is installed at its
    version (a local label such as torch's +cpu aside)."""
    wrong = []
    for name, pinned in gpuc.read_pins(ROOT / "constraints.txt").values():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (constraints.txt pins {pinned})")
            continue
        if Version(installed).public != Version(pinned).public:
            wrong.append(f"{name}: installed {installed}, constraints.txt pins {pinned}")
    assert not wrong, "dependency churn; reinstall with `make setup` or update the pins:\n" + \
        "\n".join(wrong)


def test_constraints_pin_the_core_set():
    cpu = gpuc.read_pins(ROOT / "constraints.txt")
    gpu = gpuc.gpu_pins()
    for pkg in CORE:
        assert norm(pkg) in gpu, f"{pkg} is not pinned in the GPU set"
        if pkg != "vllm":
            assert norm(pkg) in cpu, f"{pkg} is not pinned in constraints.txt"
    assert "kubernetes" in cpu and Version(cpu["kubernetes"][1]) < Version("37")


def test_pyproject_ranges_admit_the_pins_and_exact_pins_agree():
    """pyproject's ranges contain both sets' pins; its exact pins (extras) equal them."""
    proj = pyproject()
    cpu = gpuc.read_pins(ROOT / "constraints.txt")
    gpu = gpuc.gpu_pins()
    extras = proj["project"]["optional-dependencies"]
    for r in proj["project"]["dependencies"] + [x for k, v in extras.items() for x in v]:
        req = Requirement(r)
        key = norm(req.name)
        for label, pins in (("constraints.txt", cpu), ("the GPU set", gpu)):
            if key in pins and not (label == "constraints.txt" and r in extras.get("gpu", [])):
                assert req.specifier.contains(pins[key][1], prereleases=True), \
                    f"pyproject {r!r} excludes {label}'s {pins[key][0]}=={pins[key][1]}"
    for key, version in exact_pins(extras["dev"]).items():
        assert cpu[key][1] == version, f"[dev] pins {key}=={version}, constraints.txt {cpu[key][1]}"


def test_gpu_overrides_follow_the_gpu_extra():
    """torch and vllm of the GPU set are those of pyproject's [gpu] extra (vllm 0.25.1 requires
    torch==2.11.0); every override says why."""
    extra = exact_pins(pyproject()["project"]["optional-dependencies"]["gpu"])
    over = gpuc.read_pins(gpuc.OVERRIDES)
    assert set(extra) >= {"vllm", "torch"}
    for key, version in extra.items():
        assert over[key][1] == version, f"[gpu] pins {key}=={version}, constraints-gpu.txt {over[key][1]}"
    cpu = gpuc.read_pins(ROOT / "constraints.txt")
    for line in gpuc.OVERRIDES.read_text().splitlines():
        pin = gpuc.parse_pin(line)
        if pin:
            assert "#" in line, f"say why next to the override {line!r}"
            assert norm(pin[0]) in cpu or norm(pin[0]) in extra, \
                f"{pin[0]}: an override of nothing (not in constraints.txt or the [gpu] extra)"


def test_gpu_constraints_render():
    text = gpuc.render()
    pins = {norm(p[0]): p[1] for p in map(gpuc.parse_pin, text.splitlines()) if p}
    assert pins == {k: v for k, (_, v) in gpuc.gpu_pins().items()}
    assert len([line for line in text.splitlines() if gpuc.parse_pin(line)]) == len(pins)
    assert pins["torch"] == "2.11.0" and pins["vllm"] == "0.25.1"


def environment_yml() -> tuple[list, list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return deps, pip


def test_environment_yml_pins_the_gpu_set():
    """environment.yml (conda: the pins written out) == the GPU set: every pin equal, every
    direct dependency pinned, the repository installed with the [gpu] extra."""
    deps, pip = environment_yml()
    conda = [d for d in deps if isinstance(d, str)]
    assert any(re.fullmatch(r"python=3\.\d+", d) for d in conda), conda
    assert "pip" in conda
    gpu = gpuc.gpu_pins()
    pinned = {}
    for item in pip:
        if item.startswith("-e ") or item.startswith("."):
            continue
        pin = gpuc.parse_pin(item)
        assert pin, f"environment.yml: {item!r} is not pinned (name==version)"
        key = norm(pin[0])
        assert key in gpu, f"environment.yml pins {item}, which neither constraints.txt nor " \
            "infra/docker/constraints-gpu.txt pins"
        assert pin[1] == gpu[key][1], f"environment.yml pins {item}, the GPU set {gpu[key][0]}=={gpu[key][1]}"
        pinned[key] = pin[1]
    proj = pyproject()["project"]
    direct = [Requirement(r).name for r in proj["dependencies"] + proj["optional-dependencies"]["gpu"]]
    missing = [n for n in set(map(norm, direct)) | {norm(c) for c in CORE} if n in gpu and n not in pinned]
    assert not missing, f"environment.yml lacks pins for {sorted(missing)}"
    assert "-e .[gpu]" in pip
    assert pinned["torch"] == exact_pins(proj["optional-dependencies"]["gpu"])["torch"]


def test_dockerfile_installs_the_gpu_set():
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-\w+", text, re.M)
    assert "python infra/docker/gpu_constraints.py > /opt/constraints-gpu.txt" in text
    assert 'pip install -c /opt/constraints-gpu.txt ".[gpu]"' in text
    assert "COPY . ." in text


def test_flow_declares_no_environment_decorators():
    """@pypi/@conda in flow code block local runs: environments live in environment.yml/pyproject."""
    src = FLOW.read_text()
    assert not re.search(r"@\s*(pypi|conda)(_base)?\b", src)
    assert not re.search(r"import[^\n]*\b(pypi|conda)(_base)?\b", src)


# -------------------------------------------------------------------------------------------
# Metaflow profiles


@pytest.mark.parametrize("profile, required", [
    ("local", {"METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local"}),
    ("kubernetes", {"METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DEFAULT_METADATA": "service"}),
    ("batch", {"METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DEFAULT_METADATA": "service"}),
])
def test_metaflow_profiles(profile, required):
    import metaflow.metaflow_config as mc

    settings = json.loads((PROFILES / f"config_{profile}.json").read_text())
    for key, value in required.items():
        assert settings[key] == value
    for key in settings:  # a misspelt key would be ignored silently
        assert key.startswith("METAFLOW_") and hasattr(mc, key[len("METAFLOW_"):]), key
    if profile == "kubernetes":
        for key in ("METAFLOW_KUBERNETES_NAMESPACE", "METAFLOW_KUBERNETES_CONTAINER_IMAGE",
                    "METAFLOW_DATASTORE_SYSROOT_S3", "METAFLOW_SERVICE_URL"):
            assert settings[key], key
    if profile == "batch":
        for key in ("METAFLOW_BATCH_JOB_QUEUE", "METAFLOW_BATCH_CONTAINER_IMAGE",
                    "METAFLOW_ECS_S3_ACCESS_IAM_ROLE", "METAFLOW_DATASTORE_SYSROOT_S3"):
            assert settings[key], key


# -------------------------------------------------------------------------------------------
# Config keys the deployment reads


def _cfg(**pipeline):
    data = {"method": "prefix_rft", "model": {"name_or_path": "m"},
            "data": {"train": "synthetic:add", "test": "synthetic:add"}, "pipeline": pipeline}
    return resolve_flow(data, source="cfg.yaml")


@pytest.mark.parametrize("cron", ["0 3 * * 1", "*/30 2-4 1,15 * MON-FRI", "@daily", "0 0 ? * SUN"])
def test_schedule_accepts_cron(cron):
    assert _cfg(schedule=cron).pipeline.schedule == cron


@pytest.mark.parametrize("pipeline, message", [
    ({"schedule": "every monday"}, "key 'pipeline.schedule': 'every monday' is not a 5-field cron"),
    ({"schedule": "0 3 * * 1 2026"}, "key 'pipeline.schedule'"),
    ({"schedule": "@fortnightly"}, "key 'pipeline.schedule'"),
    ({"shared_memory_mb": 0}, "key 'pipeline.shared_memory_mb': 0 is out of range: "
                              "must be >= 1 (or null)"),
    ({"eval_retries": -1}, "key 'pipeline.eval_retries': -1 is out of range: must be >= 0 and <= 4"),
    ({"eval_retries": 5}, "key 'pipeline.eval_retries': 5 is out of range: must be >= 0 and <= 4"),
    ({"data": {"cpus": 0}}, "key 'pipeline.data.cpus': 0 is out of range: must be >= 1 and <= 64"),
    ({"data": {"cpus": 65}}, "key 'pipeline.data.cpus': 65 is out of range"),
    ({"data": {"memory_mb": 500}}, "key 'pipeline.data.memory_mb': 500 is out of range: must "
                                   "be >= 1000 and <= 256000"),
    ({"train": {"gpus": -1}}, "key 'pipeline.train.gpus': -1 is out of range: must be >= 0"),
    ({"eval": {"timeout_minutes": 0}}, "key 'pipeline.eval.timeout_minutes': 0 is out of range"),
    ({"project": "Qwen-7B"}, "key 'pipeline.project': 'Qwen-7B': use 1 to 128 lowercase"),
    ({"project": "q", "branch": "my.branch"}, "key 'pipeline.branch': 'my.branch': use 1 to 128"),
    ({"branch": "exp1"}, "key 'pipeline.branch': needs pipeline.project"),
])
def test_deployment_keys_are_validated(pipeline, message):
    with pytest.raises(UserError, match=re.escape(message)):
        _cfg(**pipeline)


def test_flow_config_is_the_training_config_plus_pipeline_and_tracking():
    """One YAML serves both readers: the flow's config holds every training key with the same
    values and hash as `prefix-rft train` reads, plus the two sections it alone reads."""
    path = ROOT / "configs" / "demo.yaml"
    train, flow = load_config(path), load_flow_config(path)
    assert isinstance(flow, FlowConfig) and isinstance(flow, Config)
    assert flow.config_hash() == train.config_hash()
    both = flow.to_dict()
    assert list(both)[-2:] == ["pipeline", "tracking"]
    assert {k: v for k, v in both.items() if k not in NON_TRAINING_SECTIONS} == train.to_dict()
    assert flow.pipeline.train.gpus == yaml.safe_load(path.read_text())["pipeline"]["train"]["gpus"]


def test_flow_config_keys_and_show(capsys):
    """`python -m steps.flow_config keys/show`: the flow's keys, which `prefix-rft config keys`
    (training only) no longer lists."""
    assert flow_config_main(["keys"]) == 0
    keys = capsys.readouterr().out
    assert keys.startswith(keys_text()) and "\npipeline.schedule = None\n" in keys
    assert "\ntracking.timeout_s = 10\n" in keys and "pipeline." not in keys_text()
    assert flow_config_main(["show", "--config", str(ROOT / "configs" / "demo.yaml"),
                             "--set", "pipeline.epochs=5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["pipeline"]["epochs"] == 5
    assert flow_config_main(["show", "--preset", "rft", "--set", "pipeline.epochs=0"]) == 2
    assert capsys.readouterr().err == ("error: preset rft: key 'pipeline.epochs': 0 is out of "
                                       "range: must be >= 1\n")


def test_flow_config_parser_defaults_for_the_deployment():
    got = flow_config_parser("method: rft\n")["pipeline"]
    assert got["schedule"] is None and got["shared_memory_mb"] is None
    assert got["eval_retries"] == 0
    assert got["project"] is None and got["branch"] is None
    assert got["data"] == {"cpus": 2, "memory_mb": 8000}
    assert flow_config_parser("pipeline:\n  data:\n")["pipeline"]["data"]["cpus"] == 2


def test_experiment_is_namespaced_by_project_and_branch():
    """Without @project the experiment is tracking.experiment (as before projects existed);
    under one, each project/branch (as Metaflow resolved it) has its own experiment."""
    cfg = _cfg()
    assert experiment_name(cfg, RunContext()) == "prefix-rft"
    ctx = RunContext(project="qwen_math_7b", branch="prod")
    assert experiment_name(cfg, ctx) == "prefix-rft/qwen_math_7b/prod"
    ctx = RunContext(project="qwen_math_7b", branch="user.alice")
    assert experiment_name(cfg, ctx) == "prefix-rft/qwen_math_7b/user.alice"


def test_registered_model_is_namespaced_by_project_and_branch():
    cfg = _cfg()
    assert registered_model_name(cfg, RunContext()) == f"prefix-rft-{cfg.method}"
    ctx = RunContext(project="qwen_math_7b", branch="prod")
    assert registered_model_name(cfg, ctx) == f"prefix-rft-{cfg.method}.qwen_math_7b.prod"
    cfg.tracking.registered_model = None
    assert registered_model_name(cfg, ctx) is None


def test_start_opens_the_run_in_the_project_experiment(local_servers, smollm2_dir, tmp_path):
    """`start` under @project (the context the flow fills from metaflow.current) creates the
    lineage's run in the project/branch experiment of the real tracking server."""
    from mlflow import MlflowClient

    from steps.start import start
    from tests import pipeline_configs

    data = pipeline_configs.tiny_config(smollm2_dir, tmp_path, experiment="deploy-tests")
    data["tracking"].update({"uri": local_servers.mlflow_uri, "system_metrics": False})
    ctx = RunContext(run_id="7", user="alice", project="qwen_math_7b", branch="test.exp1")
    m = start(data, ctx)
    assert m["tracking"]["experiment"] == "deploy-tests/qwen_math_7b/test.exp1"
    client = MlflowClient(local_servers.mlflow_uri)
    run = client.get_run(m["tracking"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == m["tracking"]["experiment"]
    assert run.data.tags["metaflow.project"] == "qwen_math_7b"
    assert run.data.tags["metaflow.branch"] == "test.exp1"


# -------------------------------------------------------------------------------------------
# The code package: what a remote task runs

PACKAGE_TOP = {"prefix_rft_flow.py", "prefix_rft_multinode_flow.py", "pipeline_mutators.py",
               "prefix_rft", "steps", "configs", ".mf_code", ".mf_meta", ".mf_install"}
NEVER_PACKAGED = (".pyc", ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".db")


def _metaflow_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "AWS_"))}
    env.update(METAFLOW_HOME=str(PROFILES), METAFLOW_PROFILE="local", METAFLOW_USER="tester",
               PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture(scope="module")
def code_package(tmp_path_factory) -> Path:
    """The code package of the 7B paper config, built by the class `argo-workflows create` and
    `run --with kubernetes` build it with (MetaflowPackage, same arguments), saved by
    `package save` instead of uploaded; extracted into a directory as a task would."""
    work = tmp_path_factory.mktemp("package")
    blob = work / "package.tgz"
    proc = subprocess.run(
        [sys.executable, str(FLOW), "--no-pylint", "--config", "config", str(PAPER_7B),
         "package", "save", str(blob)],
        cwd=work, env=_metaflow_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = work / "task"
    with tarfile.open(blob) as tar:
        tar.extractall(out, filter="data")
    return out


def _tracked(*dirs: str) -> set[str]:
    proc = subprocess.run(["git", "ls-files", "--", *dirs], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    return set(proc.stdout.split())


def test_code_package_carries_the_checkout(code_package):
    """The library (with its benchmark data and chat templates), the step functions, the flow
    files and the configs, at the paths the flow imports them from; nothing else of the
    repository (no tests, caches, virtual environments or weights)."""
    files = {p.relative_to(code_package).as_posix() for p in code_package.rglob("*")
             if p.is_file()}
    user = {f for f in files if not f.startswith((".mf_code/", ".mf_meta/", ".mf_install"))}
    want = _tracked("prefix_rft", "steps", "configs") | {
        f.removeprefix("flows/") for f in _tracked("flows") if f.endswith(".py")}
    assert want <= user, sorted(want - user)[:20]
    assert {f.split("/")[0] for f in files} <= PACKAGE_TOP
    assert any(f.startswith("prefix_rft/eval/benchmarks/data/") for f in user)
    assert "prefix_rft/templates/qwen2.5-instruct.jinja" in user
    assert "configs/paper/qwen2.5-math-7b.yaml" in user
    bad = [f for f in files if f.endswith(NEVER_PACKAGED) or "__pycache__" in f
           or f.startswith(("tests/", ".venv/", "runs/"))]
    assert not bad, bad[:20]
    for f in user:  # byte for byte the checkout's files
        src = ROOT / ("flows/" + f if "/" not in f else f)
        assert (code_package / f).read_bytes() == src.read_bytes(), f


def test_code_package_holds_the_config_values(code_package):
    """The --config file's values travel in the package: tasks read them there, not from disk."""
    meta = json.loads((code_package / ".mf_meta" / "CONFIG").read_text())
    pipeline = meta["user_configs"]["config"][0]["pipeline"]  # [value, is-plain flag]
    assert pipeline["project"] == "qwen_math_7b" and pipeline["train"]["gpus"] == 8
    assert pipeline["data"] == {"cpus": 4, "memory_mb": 16000}


def test_code_package_shadows_the_installed_library(code_package):
    """A task runs Python from the package's directory: its prefix_rft/ and steps/ are imported
    ahead of the copy installed in the image (here: the editable install)."""
    env = _metaflow_env()
    env.pop("PYTHONPATH")
    proc = subprocess.run(
        [sys.executable, "-c", "import prefix_rft, steps.train, pipeline_mutators; "
         "print(prefix_rft.__file__); print(steps.train.REPO)"],
        cwd=code_package, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lib, repo = proc.stdout.split()
    assert Path(lib) == code_package / "prefix_rft" / "__init__.py"
    assert Path(repo) == code_package  # where train_epoch launches torchrun from


# -------------------------------------------------------------------------------------------
# The Argo Workflows deployment, compiled offline

PRODUCTION = """\
method: prefix_rft
model: {name_or_path: Qwen/Qwen2.5-Math-1.5B}
data: {train: "synthetic:add", test: "synthetic:add"}
pipeline:
  epochs: 3
  train_retries: 2
  eval_retries: 1
  shared_memory_mb: 16000
  schedule: "0 3 * * 1"
  checkpoint_root: s3://bucket/ckpt
  train: {cpus: 16, gpus: 2, memory_mb: 120000, timeout_minutes: 600}
  eval: {cpus: 8, gpus: 1, memory_mb: 60000, timeout_minutes: 120}
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{name: WorkflowTemplate} for a production-like config and for configs/demo.yaml, compiled
    as Metaflow user 'prefix-rft' (compile_argo's default; other tests set METAFLOW_USER in this
    process, and the @project branch user.<name> depends on it)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("METAFLOW_USER", raising=False)
    try:
        return _compile_all(tmp_path_factory)
    finally:
        mp.undo()


def _compile_all(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("argo") / "production.yaml"
    path.write_text(PRODUCTION)
    nodes = path.with_name("paper_7b_nodes.yaml")  # the 7B config on 3 nodes
    paper = yaml.safe_load(PAPER_7B.read_text())
    paper["pipeline"].setdefault("train", {})["nodes"] = 3
    nodes.write_text(yaml.safe_dump(paper))
    return {"production": compile_argo.compile_argo(path),
            "paper_7b_nodes": compile_argo.compile_argo(nodes, flow=MULTINODE_FLOW),
            "demo": compile_argo.compile_argo(ROOT / "configs" / "demo.yaml"),
            "paper_7b": compile_argo.compile_argo(PAPER_7B),
            "paper_7b_prod": compile_argo.compile_argo(PAPER_7B, top=("--production",))}


def templates(wf) -> dict:
    return {t["name"]: t for t in wf["spec"]["templates"]}


def _mb(quantity: str) -> float:
    assert quantity.endswith("M"), quantity
    return float(quantity[:-1])


def test_argo_training_loop_is_a_recursive_template(compiled):
    """Metaflow compiles the self-loop of train_epoch into a steps template that calls itself:
    run one epoch (the container template), then, when the task chose `train_epoch` again,
    recurse with that task as the next one's input."""
    t = templates(compiled["production"])
    loop = t["train-epoch"]
    (run,), (again,) = loop["steps"]
    assert run["name"] == "train-epoch-internal" and run["template"] == "recursive-train-epoch"
    assert again["template"] == "train-epoch"  # the recursion
    assert again["when"] == "{{steps.train-epoch-internal.outputs.parameters.switch-step}}==train_epoch"
    (arg,) = again["arguments"]["parameters"]
    assert arg["name"] == "input-paths"
    assert arg["value"].endswith("/train_epoch/{{steps.train-epoch-internal.outputs.parameters.task-id}}")
    # the loop's outputs are the last epoch's: the recursion's if it ran, else this epoch's
    outs = {o["name"]: o["valueFrom"]["expression"] for o in loop["outputs"]["parameters"]}
    assert "steps['train-epoch-recursion']?.outputs ?? steps['train-epoch-internal']?.outputs" in outs["switch-step"]
    assert "step train_epoch" in t["recursive-train-epoch"]["container"]["command"][-1]

    dag = {task["name"]: task for task in t["PrefixRFTFlow"]["dag"]["tasks"]}
    assert dag["train-epoch"]["template"] == "train-epoch"
    assert dag["train-epoch"]["depends"] == "filter-data.Succeeded"
    # evaluation starts only once the loop's last task routed to plan_eval
    assert "tasks['train-epoch'].outputs.parameters['switch-step']" in dag["plan-eval"]["when"]
    assert "'plan_eval'" in dag["plan-eval"]["when"]
    assert dag["plan-eval-foreach-eval-items"]["withParam"]  # the eval_task foreach


def test_argo_gpu_requests_come_from_the_config(compiled):
    t = templates(compiled["production"])
    train, ev = t["recursive-train-epoch"], t["eval-task"]
    for tmpl, gpus, cpus, mem, minutes in ((train, "2", 16, 120000, 600), (ev, "1", 8, 60000, 120)):
        res = tmpl["container"]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == gpus
        assert float(res["requests"]["cpu"]) == cpus
        assert _mb(res["requests"]["memory"]) == mem
        assert tmpl["activeDeadlineSeconds"] == minutes * 60  # @timeout
        shm = {v["name"]: v for v in tmpl["volumes"]}["dhsm"]["emptyDir"]
        assert shm == {"sizeLimit": "16000Mi", "medium": "Memory"}
        assert "/dev/shm" in [m["mountPath"] for m in tmpl["container"]["volumeMounts"]]
    assert train["retryStrategy"]["limit"] == 2  # @retry(times=pipeline.train_retries)
    assert "--max-user-code-retries 2" in train["container"]["command"][-1]
    assert "--max-user-code-retries 1" in ev["container"]["command"][-1]  # pipeline.eval_retries
    for cpu_step in ("start", "filter-data", "plan-eval", "join-eval", "end"):
        assert "nvidia.com/gpu" not in (t[cpu_step]["container"]["resources"]["limits"] or {})
    # the Kubernetes profile's settings reach the pods
    k8s = json.loads((PROFILES / "config_kubernetes.json").read_text())
    assert compiled["production"]["metadata"]["namespace"] == k8s["METAFLOW_KUBERNETES_NAMESPACE"]
    assert train["container"]["image"] == k8s["METAFLOW_KUBERNETES_CONTAINER_IMAGE"]
    assert train["serviceAccountName"] == k8s["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]
    assert "127.0.0.1" not in json.dumps(compiled["production"])  # no throwaway S3 endpoint


def test_argo_cron_schedule_comes_from_the_config(compiled):
    """`argo-workflows create` makes the CronWorkflow from this schedule (metaflow/cron)."""
    ann = compiled["production"]["metadata"]["annotations"]
    assert json.loads(ann["metaflow/cron"]) == {"schedule": "0 3 * * 1", "tz": ""}
    # no schedule in the config: no schedule deployed, the demo's CPU-only requests, no /dev/shm
    demo = compiled["demo"]
    assert "metaflow/cron" not in demo["metadata"]["annotations"]
    train = templates(demo)["recursive-train-epoch"]
    assert (train["container"]["resources"]["limits"] or {}).get("nvidia.com/gpu", "0") == "0"
    # @kubernetes takes the larger of @resources and its own default (4096 MB)
    asked = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["pipeline"]["train"]
    assert _mb(train["container"]["resources"]["requests"]["memory"]) == max(asked["memory_mb"], 4096)
    assert "/dev/shm" not in [m["mountPath"] for m in train["container"]["volumeMounts"]]


def test_eval_engine_is_checked_against_the_engine_registry():
    from prefix_rft.rollout.engines.factory import register_engine, unregister_engine

    assert _cfg(eval_engine="vllm").pipeline.eval_engine == "vllm"
    with pytest.raises(UserError) as e:
        _cfg(eval_engine="tpu")
    assert str(e.value) == ("cfg.yaml: key 'pipeline.eval_engine': 'tpu' is not a registered "
                            "engine; expected one of auto, hf, vllm")

    @register_engine("tpu")
    def _build(spec):  # never built here
        raise AssertionError

    try:
        assert _cfg(eval_engine="tpu").pipeline.eval_engine == "tpu"
    finally:
        unregister_engine("tpu")


CPU_STEPS = ("start", "filter-data", "plan-eval", "join-eval", "end")


def test_argo_paper_7b_resources_per_step(compiled):
    """The 7B paper config: the CPU-only steps request pipeline.data and no GPU; training and
    evaluation their own GPUs."""
    t = templates(compiled["paper_7b"])
    pl = yaml.safe_load(PAPER_7B.read_text())["pipeline"]
    for name in CPU_STEPS:
        res = t[name]["container"]["resources"]
        assert float(res["requests"]["cpu"]) == pl["data"]["cpus"], name
        assert _mb(res["requests"]["memory"]) == pl["data"]["memory_mb"], name
        assert "nvidia.com/gpu" not in (res["limits"] or {}), name
        assert "/dev/shm" not in [m["mountPath"] for m in t[name]["container"]["volumeMounts"]]
    for name, sec in (("recursive-train-epoch", "train"), ("eval-task", "eval")):
        res = t[name]["container"]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == str(pl[sec]["gpus"]), name
        assert float(res["requests"]["cpu"]) == pl[sec]["cpus"], name
        assert _mb(res["requests"]["memory"]) == pl[sec]["memory_mb"], name
    assert pl["train"]["gpus"] == 8 and pl["eval"]["gpus"] == 1


def test_argo_paper_7b_is_deployed_under_its_project(compiled):
    """@project from pipeline.project: the template's name starts with the project (Argo drops
    underscores) and the branch, so configs and branches deploy side by side; without a project
    (the demo) the deployment keeps the flow's bare name."""
    project = yaml.safe_load(PAPER_7B.read_text())["pipeline"]["project"]
    argo_project = project.replace("_", "")
    for key, branch in (("paper_7b", "user.prefix-rft"), ("paper_7b_prod", "prod")):
        meta = compiled[key]["metadata"]
        assert meta["name"] == f"{argo_project}.{branch}.prefixrftflow"
        assert meta["annotations"]["metaflow/project_name"] == project
        assert meta["annotations"]["metaflow/branch_name"] == branch
        train = templates(compiled[key])["recursive-train-epoch"]["container"]["command"][-1]
        assert ("--production" in train) == (branch == "prod")  # tasks resolve the same branch
    assert compiled["demo"]["metadata"]["name"] == "prefixrftflow"
    assert "metaflow/project_name" not in compiled["demo"]["metadata"]["annotations"]


def _jobsets(wf) -> list[dict]:
    """The JobSet manifests of a WorkflowTemplate (Metaflow's @parallel on Kubernetes); an Argo
    expression left unquoted in the YAML (`replicas: {{=...}}`) is read as a string."""
    out = []
    for t in wf["spec"]["templates"]:
        manifest = (t.get("resource") or {}).get("manifest")
        if manifest:
            doc = yaml.safe_load(re.sub(r"(?<![\'\"])(\{\{=[^}]*\}\})", r"'\1'", manifest))
            if doc.get("kind") == "JobSet":
                out.append(doc)
    return out


def test_argo_multinode_training_is_a_jobset(compiled):
    """pipeline.train.nodes: 3 in the multi-node flow: train_launch fans out to a JobSet of a
    control job (node 0) and workers (nodes 1..), each pod with the training resources and
    /dev/shm; train_join and evaluation follow it. Single-node configs compile no JobSet."""
    wf = compiled["paper_7b_nodes"]
    t = templates(wf)
    (jobset,) = _jobsets(wf)
    assert "127.0.0.1" not in json.dumps(wf)  # the compile-time S3 endpoint, also in the manifest
    assert jobset["metadata"]["annotations"]["metaflow/step_name"] == "train_nodes"
    jobs = {j["name"]: j for j in jobset["spec"]["replicatedJobs"]}
    assert set(jobs) == {"control", "worker"} and jobs["control"]["replicas"] == 1
    assert "workerCount" in jobs["worker"]["replicas"]  # num_parallel - 1, set at run time
    pl = yaml.safe_load(PAPER_7B.read_text())["pipeline"]
    for job in jobs.values():
        pod = job["template"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(pl["train"]["gpus"])
        assert float(c["resources"]["requests"]["cpu"]) == pl["train"]["cpus"]
        assert "/dev/shm" in [m["mountPath"] for m in c["volumeMounts"]]
        assert "step train_nodes" in c["command"][-1]
        assert pod["activeDeadlineSeconds"] == pl["train"]["timeout_minutes"] * pl["epochs"] * 60
    dag = {task["name"]: task for task in t["PrefixRFTMultiNodeFlow"]["dag"]["tasks"]}
    assert {"train-launch", "train-join", "plan-eval"} <= set(dag)
    assert "train-epoch" not in dag and "recursive-train-epoch" not in t
    assert "train-launch" in dag["train-launch-foreach-parallel"]["depends"]
    assert "--nnodes" not in json.dumps(wf)  # torchrun's arguments are made in the task
    for key in ("production", "demo", "paper_7b"):
        assert _jobsets(compiled[key]) == [], key
        assert "jobset" not in json.dumps(compiled[key]).lower(), key
    assert wf["metadata"]["name"].startswith(pl["project"].replace("_", "") + ".")


def test_single_node_flow_refuses_several_nodes(tmp_path):
    """Each flow refuses the other's node counts when it is loaded, naming the key."""
    cfg = yaml.safe_load(PAPER_7B.read_text())
    cfg["pipeline"].setdefault("train", {})["nodes"] = 2
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(compile_argo.CompileError, match=r"key 'pipeline.train.nodes': 2 nodes: "
                       r"run the multi-node flow"):
        compile_argo.compile_argo(path)
    with pytest.raises(compile_argo.CompileError, match=r"key 'pipeline.train.nodes': 1 node"):
        compile_argo.compile_argo(PAPER_7B, flow=MULTINODE_FLOW)
