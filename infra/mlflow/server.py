"""A team MLflow server: Postgres backend store, S3 artifacts proxied by the server, and MLflow's
built-in authentication (`--app-name basic-auth`). Every secret comes from the environment.

    python infra/mlflow/server.py start  --root DIR --artifacts-destination s3://BUCKET/PREFIX
                                         [--port 5000] [--pg-port 5432] [--s3-endpoint URL]
                                         [--host 127.0.0.1] [--allowed-hosts mlflow.example.com]
    python infra/mlflow/server.py status --root DIR
    python infra/mlflow/server.py stop   --root DIR

Environment (all read at start time, none written to disk, none put on a command line):

    MLFLOW_AUTH_ADMIN_USERNAME      required: the admin user the first start creates
    MLFLOW_AUTH_ADMIN_PASSWORD      required: its password (12+ characters; MLflow's old default
                                    'password1234' is refused); only used while the admin user
                                    does not exist yet -- rotate it later through the REST API
    MLFLOW_DB_PASSWORD              required: the password of the Postgres role `mlflow` (set on
                                    the first start of the local Postgres; the server passes it to
                                    libpq as PGPASSWORD, so no URI or file holds it)
    MLFLOW_PG_SUPERUSER_PASSWORD    optional: the local Postgres superuser's password (default: a
                                    random one that is never stored; the `mlflow` role owns both
                                    databases, so nothing needs the superuser afterwards)
    MLFLOW_FLASK_SERVER_SECRET_KEY  optional: the signing key of the UI's sign-up form (default: a
                                    random one per start)
    AWS_* / MLFLOW_S3_ENDPOINT_URL  the artifact store's credentials; only the server needs them

`start` runs a local PostgreSQL 15 (initdb on the first start, databases `mlflow` and
`mlflow_auth`, listening on 127.0.0.1 only; as root it runs as the OS user `postgres`), writes the
auth app's configuration to a private temporary file (mode 0600, removed by `stop`), starts
`mlflow server`, waits for /health and checks that authentication is on and that the admin
credentials from the environment work. State (ports, pids, paths; no secrets) is kept in
ROOT/team-server.json. `--pg-host HOST` uses an existing Postgres instead (role `mlflow`,
databases `mlflow` and `mlflow_auth`). For a production deployment (managed Postgres, IAM, TLS)
see README.md beside this file.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path


def _load_local_servers():
    """infra/local/servers.py (free_port, _spawn, _wait, _killpg, _alive, _bin) by path."""
    name = "prefix_rft_infra_local_servers"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "local" / "servers.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


_local = _load_local_servers()
free_port = _local.free_port

STATE = "team-server.json"
DB_USER = "mlflow"
DB_NAME = "mlflow"
AUTH_DB_NAME = "mlflow_auth"
PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"  # the OS user Postgres runs as when we are root (initdb refuses root)
# The admin password older MLflow versions shipped in basic_auth.ini (GHSA-gq3w-7jj3-x7gr).
MLFLOW_LEGACY_DEFAULT_PASSWORD = "password1234"
MIN_PASSWORD_CHARS = 12  # MLflow's password policy

ENV_ADMIN_USER = "MLFLOW_AUTH_ADMIN_USERNAME"
ENV_ADMIN_PASSWORD = "MLFLOW_AUTH_ADMIN_PASSWORD"
ENV_DB_PASSWORD = "MLFLOW_DB_PASSWORD"
ENV_PG_SUPERUSER_PASSWORD = "MLFLOW_PG_SUPERUSER_PASSWORD"
ENV_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"


class TeamServerError(RuntimeError):
    """A misconfiguration or a server that did not come up (the message says which)."""


@dataclass
class Postgres:
    host: str
    port: int
    data_dir: str | None = None  # None: an external server we did not start
    pid: int | None = None


@dataclass
class TeamServer:
    root: str
    uri: str
    artifacts_destination: str
    pg_host: str
    pg_port: int
    pg_data_dir: str | None = None
    auth_config_dir: str | None = None
    pids: dict = field(default_factory=dict)


# ============================================================================ environment
def _require(env: dict, name: str, why: str) -> str:
    value = env.get(name)
    if not value:
        raise TeamServerError(f"{name} is not set: {why}. Secrets come only from the "
                              "environment; set it and start again.")
    return value


def check_admin_env(env: dict | None = None) -> tuple[str, str]:
    """The admin credentials from the environment, refused when unset, too short or MLflow's
    old default password."""
    env = os.environ if env is None else env
    user = _require(env, ENV_ADMIN_USER, "the team server needs the admin user's name")
    password = _require(env, ENV_ADMIN_PASSWORD, "the team server needs the admin user's "
                        "password (never a default)")
    if password == MLFLOW_LEGACY_DEFAULT_PASSWORD:
        raise TeamServerError(f"{ENV_ADMIN_PASSWORD} is MLflow's old default password "
                              f"'{MLFLOW_LEGACY_DEFAULT_PASSWORD}', which is public: choose "
                              "another one.")
    if len(password) < MIN_PASSWORD_CHARS:
        raise TeamServerError(f"{ENV_ADMIN_PASSWORD} is shorter than MLflow's minimum of "
                              f"{MIN_PASSWORD_CHARS} characters.")
    return user, password


# ============================================================================ Postgres
def find_pg_bindir() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl, psql), or None."""
    env = os.environ.get("MLFLOW_PG_BINDIR")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "pg_ctl").exists():
        return Path(found).resolve().parent
    # Debian/Ubuntu keep them off PATH: /usr/lib/postgresql/<major>/bin
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(dirs[-1]).parent if dirs else None


def _pg_bindir() -> Path:
    bindir = find_pg_bindir()
    if bindir is None:
        raise TeamServerError("PostgreSQL's server programs (initdb, pg_ctl) were not found: "
                              "install Debian's `postgresql` package or set MLFLOW_PG_BINDIR.")
    return bindir


def _as_pg_user(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, run `cmd` as the OS user `postgres`."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_OS_USER, "--", *cmd]
    return cmd


def _chown_to_pg_user(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _run(cmd: list[str], what: str, env: dict | None = None, input: str | None = None,
         timeout: float = 120) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, input=input,
                       timeout=timeout)
    if r.returncode != 0:
        raise TeamServerError(f"{what} failed (status {r.returncode}):\n"
                              f"{(r.stdout + r.stderr)[-2000:]}")


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier, the form Postgres stores: `CREATE ROLE ... PASSWORD '<this>'`
    sets the password without the plain text ever reaching the server (or its log)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return (f"SCRAM-SHA-256${iterations}:{b64(salt)}"
            f"${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")


def _sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def start_postgres(root: str | Path, port: int | None = None, *, env: dict | None = None,
                   durable: bool = True, timeout: float = 60.0) -> Postgres:
    """Start a local PostgreSQL on 127.0.0.1:`port` with its cluster in ROOT/postgres/data.

    The first start runs initdb (SCRAM authentication for every connection, superuser
    `postgres` with $MLFLOW_PG_SUPERUSER_PASSWORD or a random, unstored password) and creates
    the role `mlflow` (password $MLFLOW_DB_PASSWORD) owning the databases `mlflow` and
    `mlflow_auth`. Later starts reuse the cluster. `durable=False` (tests) skips fsync.
    """
    env = dict(os.environ if env is None else env)
    db_password = _require(env, ENV_DB_PASSWORD, "the password of the Postgres role "
                           f"`{DB_USER}` that MLflow connects as")
    bindir = _pg_bindir()
    root = Path(root).resolve()
    pgdir = root / "postgres"
    data = pgdir / "data"
    if any(c.isspace() or c in "'\"\\" for c in str(pgdir)):
        raise TeamServerError(f"{pgdir}: choose a root without spaces or quotes "
                              "(pg_ctl passes the socket directory through a shell)")
    root.mkdir(parents=True, exist_ok=True)
    pgdir.mkdir(mode=0o700, exist_ok=True)
    _chown_to_pg_user(pgdir)
    if os.geteuid() == 0:
        probe = subprocess.run(_as_pg_user(["test", "-w", str(pgdir), "-a", "-x", str(pgdir)]))
        if probe.returncode != 0:
            raise TeamServerError(f"{pgdir}: the OS user `{PG_OS_USER}` that runs Postgres cannot "
                                  "reach it; choose a root whose parent directories others may "
                                  "traverse (e.g. one made by `mktemp -d` + `chmod 711`).")
    port = port or free_port()
    if _local._port_open(port):
        raise TeamServerError(f"127.0.0.1:{port} is already in use; choose another Postgres port")
    ready = pgdir / "mlflow-ready"  # written once the role and databases exist
    fresh = not ready.exists()
    superuser_password = env.get(ENV_PG_SUPERUSER_PASSWORD) or secrets.token_urlsafe(24)
    if fresh:
        if data.exists():
            stop_postgres(data)
            shutil.rmtree(data)  # a half-made cluster from an interrupted first start
        pwfile = pgdir / "superuser.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(superuser_password + "\n")
        _chown_to_pg_user(pwfile)
        try:
            _run(_as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER,
                              "-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                              "--locale=C", *([] if durable else ["--no-sync"])]),
                 "initdb", timeout=timeout)
        finally:
            pwfile.unlink(missing_ok=True)
    opts = (f"-p {port} -k {shlex.quote(str(pgdir))} -c listen_addresses=127.0.0.1"
            + ("" if durable else " -c fsync=off -c synchronous_commit=off"))
    _run(_as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(pgdir / "postgres.log"),
                      "-w", "-t", str(int(timeout)), "-o", opts, "start"]),
         f"pg_ctl start (log: {pgdir / 'postgres.log'})", timeout=timeout + 10)
    pg = Postgres(host="127.0.0.1", port=port, data_dir=str(data), pid=_postmaster_pid(data))
    if fresh:
        try:
            verifier = (scram_verifier(db_password) if db_password.isascii()
                        else db_password)  # non-ASCII: let the server apply SASLprep
            sql = (f"CREATE ROLE {DB_USER} LOGIN PASSWORD {_sql_literal(verifier)};\n"
                   f"CREATE DATABASE {DB_NAME} OWNER {DB_USER};\n"
                   f"CREATE DATABASE {AUTH_DB_NAME} OWNER {DB_USER};\n")
            psql = bindir / "psql" if (bindir / "psql").exists() else "psql"
            _run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host, "-p", str(port),
                  "-U", PG_SUPERUSER, "-d", "postgres"],
                 "creating the role and databases",
                 env={**env, "PGPASSWORD": superuser_password}, input=sql, timeout=timeout)
            ready.touch()
        except BaseException:
            stop_postgres(pg)
            shutil.rmtree(data, ignore_errors=True)  # the next start begins afresh
            raise
    return pg


def _is_postgres(pid: int) -> bool:
    """Whether `pid` is still a postgres process (a stale postmaster.pid may name another)."""
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_postgres(pg: Postgres | str | Path, timeout: float = 30.0) -> None:
    """pg_ctl stop -m fast; SIGKILL the postmaster if it is still there after `timeout`."""
    data = Path(pg.data_dir if isinstance(pg, Postgres) else pg)
    if not (data / "postmaster.pid").exists():
        return
    pid = _postmaster_pid(data)
    bindir = find_pg_bindir()
    if bindir is not None:
        subprocess.run(_as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                    "-w", "-t", str(int(timeout)), "stop"]),
                       capture_output=True, timeout=timeout + 10)
    if pid and _local._alive(pid) and _is_postgres(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ============================================================================ MLflow
def db_uri(host: str, port: int, database: str) -> str:
    """No password in the URI: libpq takes it from PGPASSWORD in the server's environment."""
    return f"postgresql+psycopg://{DB_USER}@{host}:{port}/{database}"


def write_auth_config(directory: Path, *, pg_host: str, pg_port: int, admin_user: str,
                      default_permission: str = "READ", auth_cache_ttl_seconds: int = 60) -> Path:
    """basic_auth.ini for the auth app (users and permissions in the database `mlflow_auth`),
    mode 0600. It holds no secret: the admin password stays in the environment
    (MLFLOW_AUTH_ADMIN_PASSWORD, read by MLflow itself) and the DB password in PGPASSWORD.

    `auth_cache_ttl_seconds`: how long a worker remembers a verified password. Checking one
    costs ~0.1-0.3 s of CPU (scrypt) on every request otherwise, which doubles the time a
    pipeline spends logging; password changes and deletions through the REST API take effect at
    once on the worker that handled them, on other workers within the TTL (0 turns it off)."""
    path = directory / "basic_auth.ini"
    text = (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {db_uri(pg_host, pg_port, AUTH_DB_NAME)}\n"
        f"admin_username = {admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {int(auth_cache_ttl_seconds)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _http_status(url: str, headers: dict | None = None, timeout: float = 10) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0  # nothing answered


def verify_auth(uri: str, admin_user: str, admin_password: str) -> None:
    """Authentication is on (an anonymous API call gets 401) and the admin credentials from the
    environment are accepted (they are only applied while the admin user does not exist)."""
    api = f"{uri}/api/2.0/mlflow/users/get?username={urllib.parse.quote(admin_user)}"
    anonymous = _http_status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")
    if anonymous != 401:
        raise TeamServerError(f"{uri}: an unauthenticated API call got HTTP {anonymous}, not 401: "
                              "authentication is not on")
    status = _http_status(api, _basic(admin_user, admin_password))
    if status != 200:
        raise TeamServerError(
            f"{uri}: the admin credentials from {ENV_ADMIN_USER}/{ENV_ADMIN_PASSWORD} were "
            f"refused (HTTP {status}). The password is only applied when the admin user is "
            "created (the first start); after a rotation through the REST API "
            "(PATCH /api/2.0/mlflow/users/update-password) set the new one in the environment.")


def start_mlflow_team_server(root: str | Path, *, pg_host: str, pg_port: int,
                             artifacts_destination: str, port: int | None = None,
                             host: str = "127.0.0.1", s3_endpoint: str | None = None,
                             allowed_hosts: str | None = None, workers: int = 1,
                             default_permission: str = "READ", auth_cache_ttl_seconds: int = 60,
                             env: dict | None = None, timeout: float = 120.0) -> TeamServer:
    """Start `mlflow server` with the Postgres backend, proxied S3 artifacts and basic-auth.

    `env` (default: os.environ) must hold MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD and
    MLFLOW_DB_PASSWORD; they are checked before anything starts. Returns once /health answers,
    anonymous API calls are refused and the admin credentials work.
    """
    env = dict(os.environ if env is None else env)
    admin_user, admin_password = check_admin_env(env)
    db_password = _require(env, ENV_DB_PASSWORD, "the password of the Postgres role "
                           f"`{DB_USER}` that MLflow connects as")
    if not artifacts_destination.startswith("s3://"):
        raise TeamServerError(f"--artifacts-destination {artifacts_destination!r}: expected "
                              "s3://BUCKET/PREFIX")
    if importlib.util.find_spec("flask_wtf") is None:
        raise TeamServerError("MLflow's basic-auth app needs Flask-WTF (MLflow's `auth` "
                              "extra): pip install 'mlflow[auth]'")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if _local._port_open(port):
        raise TeamServerError(f"{host}:{port} is already in use; choose another port")
    conf_dir = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))  # mode 0700
    ini = write_auth_config(conf_dir, pg_host=pg_host, pg_port=pg_port, admin_user=admin_user,
                            default_permission=default_permission,
                            auth_cache_ttl_seconds=auth_cache_ttl_seconds)
    server_env = {
        **env,
        "PGPASSWORD": db_password,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        ENV_SECRET_KEY: env.get(ENV_SECRET_KEY) or secrets.token_hex(32),
        # Without this the server spawns ~7 job-runner processes (~2 GB).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if s3_endpoint:
        server_env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    cmd = [_local._bin("mlflow"), "server", "--host", host, "--port", str(port),
           "--backend-store-uri", db_uri(pg_host, pg_port, DB_NAME),
           "--artifacts-destination", artifacts_destination, "--serve-artifacts",
           "--workers", str(workers), "--app-name", "basic-auth"]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    log = root / "mlflow.log"
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    uri = f"http://{connect}:{port}"
    proc = _local._spawn(cmd, log, server_env)
    try:
        _local._wait(f"{uri}/health", lambda st, body: body.strip() == "OK", timeout, proc, log)
        verify_auth(uri, admin_user, admin_password)
    except BaseException:
        _local._killpg(proc.pid)
        shutil.rmtree(conf_dir, ignore_errors=True)
        raise
    return TeamServer(root=str(root), uri=uri, artifacts_destination=artifacts_destination,
                      pg_host=pg_host, pg_port=pg_port, auth_config_dir=str(conf_dir),
                      pids={"mlflow": proc.pid})


# ============================================================================ both, with state
def start(root: str | Path, *, artifacts_destination: str, port: int | None = None,
          pg_port: int | None = None, pg_host: str | None = None, env: dict | None = None,
          durable: bool = True, **mlflow_kw) -> TeamServer:
    """Postgres (unless `pg_host` names an existing one) + the MLflow server; state in
    ROOT/team-server.json. Refuses to start anything when the admin credentials are missing."""
    env = dict(os.environ if env is None else env)
    check_admin_env(env)
    root = Path(root).resolve()
    if (root / STATE).exists():
        old = load(root)
        if any(_local._alive(p) for p in old.pids.values() if p):
            raise TeamServerError(f"{root}: a team server is already running ({old.uri}); stop it "
                                  f"first: python {__file__} stop --root {root}")
        stop(root)
    pg = None
    if pg_host is None:
        pg = start_postgres(root, pg_port, env=env, durable=durable)
        pg_host, pg_port = pg.host, pg.port
    elif pg_port is None:
        pg_port = 5432
    try:
        server = start_mlflow_team_server(root, pg_host=pg_host, pg_port=pg_port,
                                          artifacts_destination=artifacts_destination,
                                          port=port, env=env, **mlflow_kw)
    except BaseException:
        if pg is not None:
            stop_postgres(pg)
        raise
    if pg is not None:
        server.pg_data_dir = pg.data_dir
        server.pids["postgres"] = pg.pid
    (root / STATE).write_text(json.dumps(asdict(server), indent=1))
    return server


def load(root: str | Path) -> TeamServer:
    path = Path(root) / STATE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no team server started here (run `start` first)")
    return TeamServer(**json.loads(path.read_text()))


def stop(root: str | Path | TeamServer) -> None:
    """Kill the MLflow server's process group, stop Postgres, remove the auth config."""
    server = root if isinstance(root, TeamServer) else None
    if server is None:
        if not (Path(root) / STATE).exists():
            return
        server = load(root)
    if server.pids.get("mlflow"):
        _local._killpg(server.pids["mlflow"])
    if server.pg_data_dir:
        stop_postgres(server.pg_data_dir)
    if server.auth_config_dir:
        shutil.rmtree(server.auth_config_dir, ignore_errors=True)
    (Path(server.root) / STATE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["start", "stop", "status"])
    p.add_argument("--root", required=True, help="state dir (Postgres cluster, logs)")
    p.add_argument("--artifacts-destination", help="s3://BUCKET/PREFIX (start)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--pg-port", type=int, help="local Postgres port (default: a free one)")
    p.add_argument("--pg-host", help="use this existing Postgres instead of starting one")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint (default: AWS)")
    p.add_argument("--allowed-hosts", help="Host names the server answers to behind a proxy")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--default-permission", default="READ",
                   choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"])
    p.add_argument("--auth-cache-ttl", type=int, default=60,
                   help="seconds a verified password is remembered (0: off; default %(default)s)")
    a = p.parse_args(argv)
    try:
        if a.command == "start":
            if not a.artifacts_destination:
                p.error("start needs --artifacts-destination s3://BUCKET/PREFIX")
            s = start(a.root, artifacts_destination=a.artifacts_destination, port=a.port,
                      pg_port=a.pg_port, pg_host=a.pg_host, host=a.host,
                      s3_endpoint=a.s3_endpoint, allowed_hosts=a.allowed_hosts,
                      workers=a.workers, default_permission=a.default_permission,
                      auth_cache_ttl_seconds=a.auth_cache_ttl)
            print(f"MLflow (basic-auth): {s.uri}\nPostgres: {s.pg_host}:{s.pg_port}\n"
                  f"artifacts: {s.artifacts_destination} (proxied)\n"
                  "clients: MLFLOW_TRACKING_URI + MLFLOW_TRACKING_USERNAME/PASSWORD\n"
                  f"stop with: python {sys.argv[0]} stop --root {a.root}")
        elif a.command == "stop":
            stop(a.root)
        else:
            s = load(a.root)
            for name, pid in s.pids.items():
                print(f"{name}: pid {pid} {'running' if pid and _local._alive(pid) else 'NOT running'}")
            health = _http_status(f"{s.uri}/health", timeout=3) if s.pids.get("mlflow") else None
            print(f"MLflow {s.uri} (/health: {health})  Postgres {s.pg_host}:{s.pg_port}  "
                  f"artifacts {s.artifacts_destination}")
    except (TeamServerError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
