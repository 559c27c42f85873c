"""Start and stop a local MLflow tracking server and a local S3-compatible server (moto).

    python infra/local/servers.py start [--root .infra/local] [--mlflow-port 5000] [--s3-port 9000]
    python infra/local/servers.py env   [--root ...]     # `export ...` lines for your shell
    python infra/local/servers.py status [--root ...]
    python infra/local/servers.py stop  [--root ...]

Both listen on 127.0.0.1 only. MLflow keeps runs in ROOT/mlflow.db (sqlite) and stores artifacts
in s3://BUCKET/mlflow-artifacts on the moto server (proxied: clients only talk to MLflow). The
moto server keeps its state in memory: stopping it loses the S3 objects (checkpoints and MLflow
artifacts); the sqlite file survives. State (pids, ports, URIs) is written to ROOT/servers.json;
`stop` kills the process groups recorded there. Used by the test suite, by CI and by users who
want the MLflow UI; only the standard library, `boto3` and the two servers' own packages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path(".infra/local")
MOTO_DOWNLOAD_CHUNK = 64 * 1024**3  # bytes per ranged GET of MLflow downloads: whole files
STATE = "servers.json"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Servers:
    root: str
    mlflow_uri: str
    s3_endpoint: str
    bucket: str
    pids: dict = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Environment that points MLflow, boto3 and Metaflow at these servers."""
        return {
            **AWS_ENV,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "METAFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            # moto copies a whole object for every ranged GET (under a lock): MLflow's parallel
            # 100 MB ranges of a 3 GB weights file queue past its fixed 10 s per-range timeout
            # and the download never ends. One range per file is one copy (3.3 GB came back in
            # 33 s on a 2-core VM: perf/mlflow_weights.py).
            # Real S3 serves ranges natively: do not carry this over to a cluster.
            "MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE": str(MOTO_DOWNLOAD_CHUNK),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(url: str, ok, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with status {proc.returncode}; "
                               f"its log {log}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status, r.read().decode(errors="replace")):
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url}: not healthy after {timeout:.0f} s; its log {log}")


def _spawn(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    # New session: `stop` kills the whole group (mlflow server forks uvicorn workers).
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _bin(name: str) -> str:
    """The console script next to this interpreter (a venv's), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def start(root: str | Path = DEFAULT_ROOT, mlflow_port: int | None = None,
          s3_port: int | None = None, bucket: str = "prefix-rft", timeout: float = 60.0) -> Servers:
    """Start moto (S3) and MLflow; return once both answer their health checks."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (root / STATE).exists():
        old = load(root)
        if all(_alive(p) for p in old.pids.values()):
            raise RuntimeError(f"{root}: servers already running ({old.mlflow_uri}, {old.s3_endpoint});"
                               f" stop them first: python {__file__} stop --root {root}")
        stop(root)
    s3_port = s3_port or free_port()
    mlflow_port = mlflow_port or free_port()
    for port in (s3_port, mlflow_port):
        if _port_open(port):
            raise RuntimeError(f"127.0.0.1:{port} is already in use; choose another port")
    s3 = f"http://127.0.0.1:{s3_port}"
    env = {**os.environ, **AWS_ENV}
    servers = Servers(root=str(root), mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
                      s3_endpoint=s3, bucket=bucket)
    procs = []
    try:
        moto = _spawn([_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                      root / "moto.log", env)
        procs.append(moto)
        servers.pids["moto"] = moto.pid
        _wait(f"{s3}/moto-api/", lambda st, body: st == 200, timeout, moto, root / "moto.log")
        import boto3

        boto3.client("s3", endpoint_url=s3, region_name=AWS_ENV["AWS_DEFAULT_REGION"],
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=bucket)
        mlflow_env = {**env, "MLFLOW_S3_ENDPOINT_URL": s3,
                      # Without this the server spawns ~7 job-runner processes (~2 GB).
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow = _spawn([
            _bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{bucket}/mlflow-artifacts", "--workers", "1",
        ], root / "mlflow.log", mlflow_env)
        procs.append(mlflow)
        servers.pids["mlflow"] = mlflow.pid
        _wait(f"{servers.mlflow_uri}/health", lambda st, body: body.strip() == "OK", timeout,
              mlflow, root / "mlflow.log")
    except BaseException:
        for p in procs:
            _killpg(p.pid)
        raise
    (root / STATE).write_text(json.dumps(asdict(servers), indent=1))
    return servers


def load(root: str | Path = DEFAULT_ROOT) -> Servers:
    path = Path(root) / STATE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no servers started here (run `start` first)")
    return Servers(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _killpg(pid: int, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def stop(root: str | Path = DEFAULT_ROOT) -> None:
    path = Path(root) / STATE
    if not path.exists():
        return
    for pid in load(root).pids.values():
        _killpg(pid)
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["start", "stop", "env", "status"])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="state dir (default: %(default)s)")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--s3-port", type=int, default=9000)
    p.add_argument("--bucket", default="prefix-rft")
    a = p.parse_args(argv)
    if a.command == "start":
        s = start(a.root, a.mlflow_port, a.s3_port, a.bucket)
        print(f"MLflow UI:  {s.mlflow_uri}\nS3 (moto):  {s.s3_endpoint}  bucket s3://{s.bucket}\n"
              f"stop with:  python {sys.argv[0]} stop --root {a.root}\n"
              f"environment for your shell:  eval \"$(python {sys.argv[0]} env --root {a.root})\"")
    elif a.command == "stop":
        stop(a.root)
    elif a.command == "env":
        for k, v in load(a.root).env().items():
            print(f"export {k}={v}")
    else:
        s = load(a.root)
        for name, pid in s.pids.items():
            print(f"{name}: pid {pid} {'running' if _alive(pid) else 'NOT running'}")
        print(f"MLflow {s.mlflow_uri}  S3 {s.s3_endpoint}  bucket {s.bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
