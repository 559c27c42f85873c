#!/usr/bin/env python3
"""Compile the pipeline's Argo Workflows deployment offline: the WorkflowTemplate JSON that
`argo-workflows create` would submit, with no cluster, no S3 and no network.

    python infra/metaflow/compile_argo.py --config configs/paper/qwen2.5-math-1.5b.yaml \
        [--profile kubernetes] [--branch B | --production] [-o workflow-template.json]
    make argo-json CONFIG=...            # the same, into runs/argo/

`argo-workflows create --only-json` skips the cluster and the metadata service, but still uploads
the code package to the S3 datastore. This starts a throwaway S3 server (moto, in-process, on
127.0.0.1), points the datastore at it, and takes every other setting from the Metaflow profile
infra/metaflow/config_<profile>.json (namespace, image, service account, secrets). The throwaway
endpoint is removed from the printed JSON; the code package URL in it points at the profile's
bucket but was never uploaded there. Used by tests/test_infra.py.

The command it runs (see `command()`), with METAFLOW_HOME=infra/metaflow, METAFLOW_PROFILE=kubernetes,
METAFLOW_S3_ENDPOINT_URL=<moto> and dummy AWS credentials:

    python flows/prefix_rft_flow.py --no-pylint --config config CONFIG --with retry \
        argo-workflows create --only-json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "flows" / "prefix_rft_flow.py"
PROFILES = ROOT / "infra" / "metaflow"
AWS_DUMMY = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
             "AWS_DEFAULT_REGION": "us-east-1"}


class CompileError(RuntimeError):
    pass


def profile_settings(profile: str) -> dict:
    path = PROFILES / f"config_{profile}.json"
    if not path.is_file():
        raise CompileError(f"no Metaflow profile {path}")
    return json.loads(path.read_text())


def command(config: str | Path, flow: Path = FLOW, with_: tuple[str, ...] = ("retry",),
            extra: tuple[str, ...] = (), top: tuple[str, ...] = ()) -> list[str]:
    """`top`: more options of the flow's command line (e.g. --branch B, --production)."""
    cmd = [sys.executable, str(flow), "--no-pylint", "--config", "config", str(config), *top]
    for deco in with_:
        cmd += ["--with", deco]
    return cmd + ["argo-workflows", "create", "--only-json", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strip_endpoint(node, endpoint: str):
    """Drop the throwaway S3 endpoint from every container's env, also inside manifests that
    Argo carries as YAML text (the JobSet of a multi-node step); returns the cleaned node."""
    if isinstance(node, dict):
        env = node.get("env")
        if isinstance(env, list):
            node["env"] = [e for e in env
                           if not (isinstance(e, dict) and e.get("value") == endpoint)]
        for k, v in node.items():
            node[k] = _strip_endpoint(v, endpoint)
    elif isinstance(node, list):
        return [_strip_endpoint(v, endpoint) for v in node]
    elif isinstance(node, str) and endpoint in node:
        # a manifest as YAML text (its Argo expressions are not YAML): drop "- name: X" entries
        # whose value is the endpoint, keeping everything else byte for byte
        entry = (r"\n([ \t]*)- name: [A-Za-z0-9_]+\n\1  value: [\"']?" + re.escape(endpoint)
                 + r"[\"']?(?=\n|$)")
        return re.sub(entry, "", node)
    return node


def compile_argo(config: str | Path, *, profile: str = "kubernetes", flow: Path = FLOW,
                 with_: tuple[str, ...] = ("retry",), extra: tuple[str, ...] = (),
                 top: tuple[str, ...] = (), timeout: float = 300) -> dict:
    """The WorkflowTemplate (a dict) that `argo-workflows create` would deploy for `config`."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    config = Path(config).resolve()  # the command runs in a scratch directory
    settings = profile_settings(profile)
    root = settings.get("METAFLOW_DATASTORE_SYSROOT_S3", "")
    if not root.startswith("s3://"):
        raise CompileError(f"profile {profile!r}: Argo Workflows needs an s3:// "
                           f"METAFLOW_DATASTORE_SYSROOT_S3, got {root!r}")
    bucket = root[len("s3://"):].split("/", 1)[0]
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=endpoint, **{
            "aws_access_key_id": "test", "aws_secret_access_key": "test",
            "region_name": "us-east-1"}).create_bucket(Bucket=bucket)
        # Only the profile speaks for Metaflow: drop the caller's METAFLOW_* and AWS_* settings.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("METAFLOW_", "AWS_"))}
        env.update(AWS_DUMMY)
        env.update({
            "METAFLOW_HOME": str(PROFILES),
            "METAFLOW_PROFILE": profile,
            "METAFLOW_S3_ENDPOINT_URL": endpoint,
            "METAFLOW_USER": os.environ.get("METAFLOW_USER", "prefix-rft"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        })
        with tempfile.TemporaryDirectory() as cwd:
            proc = subprocess.run(command(config, flow, with_, extra, top), cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=timeout)
    finally:
        server.stop()
    if proc.returncode != 0:
        raise CompileError(f"argo-workflows create --only-json failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    try:
        template = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise CompileError(f"no JSON on stdout ({e}):\n{proc.stdout[:2000]}\n{proc.stderr[-2000:]}") from None
    template = _strip_endpoint(template, endpoint)
    return template


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the pipeline's YAML config")
    ap.add_argument("--profile", default="kubernetes",
                    help="Metaflow profile in infra/metaflow/ (config_<profile>.json)")
    ap.add_argument("-o", "--output", help="write the JSON here (default: stdout)")
    ap.add_argument("--branch", help="@project branch (configs with pipeline.project)")
    ap.add_argument("--production", action="store_true", help="@project production branch")
    args = ap.parse_args(argv)
    top = (("--branch", args.branch) if args.branch else ()) + (
        ("--production",) if args.production else ())
    try:
        template = compile_argo(args.config, profile=args.profile, top=top)
    except CompileError as e:
        print(e, file=sys.stderr)
        return 1
    text = json.dumps(template, indent=2) + "\n"
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        cron = template["metadata"].get("annotations", {}).get("metaflow/cron")
        print(f"{args.output}: WorkflowTemplate {template['metadata']['name']} "
              f"({len(template['spec']['templates'])} templates; schedule: "
              f"{json.loads(cron)['schedule'] if cron else 'none'})")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
