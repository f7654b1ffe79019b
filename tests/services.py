"""Real services on loopback for integration tests: started as processes we own, stopped by their ids."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# Ports for the services the tests start come from a range of their own, below the kernel's ephemeral range
# (32768-60999 here) and above Ray's worker ports (10002-19999 by default), one slice per xdist worker (four slices). A port the
# kernel hands out for "port 0" can be taken again, between our check and the service's bind, by any process that
# asks for an ephemeral port (Ray starts many): a SuperNode once failed to start that way. Within one slice only
# this process allocates, and never the same port twice.
_PORT_SLICE = 3000
_PORT_BASE = 20000
_handed_out: set[int] = set()


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = _PORT_BASE + (index % 4) * _PORT_SLICE
    return range(start, start + _PORT_SLICE)


def free_port() -> int:
    """A loopback port that is free now and that no other test of this run is handed."""
    ports = _slice()
    offset = os.getpid() % len(ports)  # a fresh process does not start where an earlier run's services may linger
    for i in range(len(ports)):
        port = ports[(offset + i) % len(ports)]
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1}")


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent id, start time) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every live process below ``pid``, as (id, start time): the start time tells a reused id apart."""
    children: dict[int, list[tuple[int, str]]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            children.setdefault(st[0], []).append((int(d.name), st[1]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group the service leads (its own id), then SIGKILL what is left, and every process it
    started in a session of its own (a SuperLink's ServerApp): those outlive the group's signal, their parent
    gone, when a run did not end by itself. Their ids are read before anything is signalled."""
    below = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)
    for pid, started in below:
        st = _stat(pid)
        if st is not None and st[1] == started:  # the same process, not a later one given its id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
              "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{e.get('PATH', '')}",
              # Ray's dashboard gives each of its modules 30 s to start, then stops the head: on a loaded 2-core
              # machine MetricsHead took longer (CI, 2 Dec 2026); the product sets the same default
              "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "180"})
    e.update(extra)
    return e


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), start_new_session=True,
                            stdout=open(root / "mlflow.log", "w"), stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", proc=proc)
    except Exception:
        stop(proc)
        raise
    return proc, uri


# ---------------------------------------------------------------------------------------------- Flower


def flower_env(home: Path, **extra: str) -> dict[str, str]:
    return env(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", **extra)


def write_connection(home: Path, name: str, address: str, root_certificates: Path | None) -> None:
    """$FLWR_HOME/config.toml with one SuperLink connection (TLS with our CA, or insecure)."""
    home.mkdir(parents=True, exist_ok=True)
    auth = f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                                      f'address = "{address}"\n{auth}\n')


def make_certs(out: Path, *sites: str) -> Path:
    subprocess.run(["bash", str(REPO / "infra" / "flower" / "make_certs.sh"), str(out), *sites], check=True,
                   capture_output=True, timeout=60)
    return out


def start_superlink(root: Path, home: Path, certs: Path | None, auth: bool = True) -> tuple[subprocess.Popen, str]:
    """A SuperLink on loopback (TLS + node authentication with ``certs``, else --insecure)."""
    port = free_port()
    # Flower's state in memory (its default), not in an SQLite file: on a loaded 2-core machine the file's lock
    # timed out ("database is locked"), the SuperLink answered the ServerApp's pull with HTTP 500 and the run ended
    # after its first evaluation, while `flwr run --stream` still exited 0. Nothing here restarts the SuperLink.
    cmd = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
           "--disable-runtime-dependency-installation",
           "--health-server-address", f"127.0.0.1:{free_port()}"]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.crt"),
                "--ssl-keyfile", str(certs / "server.key")]
        if auth:
            cmd.append("--enable-supernode-auth")
    proc = subprocess.Popen(cmd, env=flower_env(home), start_new_session=True, cwd=root,
                            stdout=open(root / "superlink.log", "w"), stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}: "
                               f"{(root / 'superlink.log').read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, address
        time.sleep(0.3)
    stop(proc)
    raise TimeoutError("flower-superlink did not open its port within 60 s")


def start_supernode(root: Path, home: Path, name: str, address: str, node_config: str,
                    certs: Path | None, key: Path | None) -> subprocess.Popen:
    cmd = [str(BIN / "flower-supernode"), "--superlink", address, "--port", str(free_port()),
           "--node-config", node_config, "--health-server-address", f"127.0.0.1:{free_port()}"]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(certs / "ca.crt")]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return subprocess.Popen(cmd, env=flower_env(home), start_new_session=True, cwd=root,
                            stdout=open(root / f"{name}.log", "w"), stderr=subprocess.STDOUT)


def flwr(home: Path, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], env=flower_env(home), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO)
