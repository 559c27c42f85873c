"""Weights through MLflow: how long a GB-size model takes to go into a LoggedModel's artifacts
on an MLflow server (S3 artifact store) and to come back through `load_registered`, the path
of a pipeline whose checkpoints are local while MLflow is a server (join_eval copies the best
and last checkpoints' weights; users load them by `models:/<name>@best`).

    python perf/mlflow_weights.py                    # 3.3 GB (a 1.5B model in bf16)
    python perf/mlflow_weights.py --gb 0.5 --out results.jsonl
    python perf/mlflow_weights.py --tracking-uri http://mlflow:5000   # a server of yours

Without --tracking-uri it starts the local stack (infra/local/servers.py: MLflow + moto) in a
temporary directory and stops it at the end. The file is random bytes (a stand-in for
`model.safetensors`, next to a small config.json); its sha256 is compared after the download.
Prints one JSON line (and appends it to --out): size, upload seconds, download seconds, MB/s,
whether the bytes match, the MLflow version and the machine. Needs about 2x the size in free
disk under --work (the file and its download) and, with moto, about 3x the size in memory
(moto holds objects in memory). Numbers go to docs/PERFORMANCE.md with the command, the
machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=3.3, help="weights file size in GB (1e9 bytes)")
    p.add_argument("--tracking-uri", default=None,
                   help="an MLflow server to use (default: start the local stack)")
    p.add_argument("--work", default=None, help="scratch directory (default: a new temp dir)")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    a = p.parse_args()
    if a.gb <= 0:
        p.error(f"--gb must be > 0, got {a.gb}")

    sys.path.insert(0, str(ROOT))
    work = Path(a.work or tempfile.mkdtemp(prefix="mlflow-weights-"))
    work.mkdir(parents=True, exist_ok=True)
    servers = stack = None
    if a.tracking_uri is None:
        sys.path.insert(0, str(ROOT / "infra" / "local"))
        import servers

        stack = servers.start(work / "infra", timeout=120)
        os.environ.update(stack.env())
    uri = a.tracking_uri or stack.mlflow_uri
    try:
        import mlflow

        from prefix_rft.io.store import sha256_file
        from prefix_rft.io.tracking import Tracker, load_registered

        size = int(a.gb * 1e9)
        model = work / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps({"model_type": "stand-in"}))
        _write_random(model / "model.safetensors", size)
        want = sha256_file(model / "model.safetensors")

        t = Tracker(uri)
        exp = t.experiment_id("perf-mlflow-weights")
        m = t.client.create_logged_model(exp, name=f"weights-{uuid.uuid4().hex[:8]}")
        t0 = time.perf_counter()
        t.attach_weights(m.model_id, model)
        up = time.perf_counter() - t0
        t.client.finalize_logged_model(m.model_id, "READY")
        name = f"perf-weights-{uuid.uuid4().hex[:8]}"
        t.register_model(name, m.model_id, aliases=("best",))
        t0 = time.perf_counter()
        got = load_registered(f"models:/{name}@best", tracking_uri=uri, dst=work / "dl")
        down = time.perf_counter() - t0
        same = sha256_file(got / "model.safetensors") == want
        row = {
            "bytes": size, "upload_s": round(up, 1), "download_s": round(down, 1),
            "upload_MBps": round(size / up / 1e6, 1), "download_MBps": round(size / down / 1e6, 1),
            "sha256_match": same, "server": "local stack (moto)" if stack else "given",
            "mlflow": mlflow.__version__, "machine": platform.node(), "cpus": os.cpu_count(),
            "command": " ".join(sys.argv),
        }
    finally:
        if stack is not None:
            servers.stop(work / "infra")
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(row)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
