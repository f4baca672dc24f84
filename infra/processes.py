"""Child processes livetrack starts (worker, gateway, simulator): started with settings, stopped by PID."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import psutil
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from infra.settings import Settings

PR_SET_PDEATHSIG = 1

__all__ = ["WORKER_READY", "Proc", "env_for", "http_ok", "pid_alive", "pid_from_file", "port_in_use", "raise_open_files_limit", "scrape",
           "set_switch_interval", "spawn", "spawn_server", "stop_pid", "wait_http_ok", "worker_args", "gateway_args", "sim_args",
           "shop_args", "legacy_args", "sinks_args"]

WORKER_READY = "Worker]: Ready"  # what `faust worker` logs once its partitions are assigned


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie child of ours is reaped and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def pid_from_file(pid_file: Path) -> int | None:
    """The PID a server's pid file names while that process runs, else None."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def spawn_server(args: Sequence[str], log_file: Path, pid_file: Path) -> int:
    """Start a server (broker, PostgreSQL, Connect worker) in its own session, so a terminal's Ctrl-C
    reaches us, not it: we stop it by the PID written to `pid_file`. Output is appended to `log_file`."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_pid(pid_file: Path, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Stop the server a pid file names (`sig`, then SIGKILL after `timeout_s`); True if one was running."""
    pid = pid_from_file(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open files to the hard one (each socket is a file); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def set_switch_interval(settings: Settings) -> None:
    """Let a thread waiting for the GIL have it after `switch_interval_ms` (Python's default: 5 ms).

    The worker's and gateway's librdkafka reader threads hand records to a busy event loop; each
    hand-over waited up to a whole interval for the GIL. 1 ms: offers at 50 requests/s came ~15%
    sooner at p50 (docs/benchmarks.md)."""
    sys.setswitchinterval(settings.switch_interval_ms / 1000)


def env_for(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVETRACK_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue  # unset optional: the child's default is None too
        if isinstance(value, SecretStr):
            value = value.get_secret_value()  # str() would give the mask
        env[f"LIVETRACK_{name.upper()}"] = str(value)
    return env


class Proc:
    """A child process we started; stopped by its PID, never by name."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str, log: Path, log_start: int = 0) -> None:
        self.popen = popen
        self.name = name
        self.log = log
        self.log_start = log_start  # the log is appended to: this run's output starts here
        self.ps = psutil.Process(popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> bytes:
        """What this run has written to its log so far."""
        with open(self.log, "rb") as f:
            f.seek(self.log_start)
            return f.read()

    def wait_for_output(self, marker: str, timeout_s: float) -> None:
        """Block until this run's log shows `marker`; raise if the process dies or time runs out."""
        _wait(lambda: marker.encode() in self.output(), [self], timeout_s, f"{self.name} not ready")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Signal the process, wait, and SIGKILL it if it does not go."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies (Linux), so nothing is orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: Sequence[str], settings: Settings, name: str, *, tree: Path | None = None) -> Proc:
    """Start `args` with `settings`, output to state_dir/logs/<name>.log, in its own session
    (so a terminal's Ctrl-C reaches only us, and we stop children in order); `tree`: run the code
    of that checkout instead of this one (an upgrade test)."""
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    log_start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        env = env_for(settings)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        popen = subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tree,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    return Proc(popen, name, log, log_start)


def http_ok(url: str) -> bool:
    """True when `url` (on loopback) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def scrape(url: str) -> list[Metric]:
    """The metric families a Prometheus endpoint (gateway or worker `/metrics`, loopback) serves now."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(text_string_to_metric_families(resp.read().decode()))


def wait_http_ok(url: str, procs: Sequence[Proc], timeout_s: float = 60) -> None:
    """Block until `url` answers 200; raise if one of `procs` dies or time runs out."""
    _wait(lambda: http_ok(url), procs, timeout_s, f"{url} not answering")


def _wait(ready: Callable[[], bool], procs: Sequence[Proc], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        dead = [p for p in procs if not p.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited; see {dead[0].log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s:.0f}s; see {', '.join(str(p.log) for p in procs)}")
        time.sleep(0.2)


def worker_args() -> list[str]:
    # -l info, not warn: at warn Faust's terminal spinner sets the root logger to
    # DEBUG, and every log.debug() in Faust and aiokafka builds a record (~7% CPU).
    return [sys.executable, "-m", "faust", "-A", "agents.worker", "worker", "-l", "info"]


def gateway_args() -> list[str]:
    return [sys.executable, "-m", "infra.cli", "gateway"]


def sim_args() -> list[str]:
    return [sys.executable, "-m", "infra.cli", "sim"]


def legacy_args(action: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "infra.cli", "legacy", action, *extra]


def shop_args(first_order: str, first_customer: str) -> list[str]:
    return [sys.executable, "-m", "infra.cli", "shop", "--first-order", first_order, "--first-customer", first_customer]


def sinks_args() -> list[str]:
    """The local SMTP, SMS and web push servers (`livetrack notifications sinks`)."""
    return [sys.executable, "-m", "infra.cli", "notifications", "sinks"]
