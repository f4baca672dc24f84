"""Child processes livetrack starts (worker, gateway, simulator): started with settings, stopped by PID."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Sequence

import psutil

from infra.settings import Settings

PR_SET_PDEATHSIG = 1

__all__ = ["Proc", "env_for", "http_ok", "spawn", "worker_args", "gateway_args", "sim_args"]


def env_for(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVETRACK_")}
    for name, value in settings.model_dump().items():
        env[f"LIVETRACK_{name.upper()}"] = str(value)
    return env


class Proc:
    """A child process we started; stopped by its PID, never by name."""

    def __init__(self, popen: subprocess.Popen[bytes] | None, name: str, log: Path | None, pid: int = 0) -> None:
        self.popen = popen
        self.name = name
        self.log = log if log is not None else Path("/dev/null")
        self.ps = psutil.Process(popen.pid if popen is not None else pid)

    @classmethod
    def attach(cls, pid: int, name: str) -> "Proc":
        """A process started elsewhere (the broker): measured, not stopped, by this object."""
        return cls(None, name, None, pid)

    @property
    def pid(self) -> int:
        return self.ps.pid

    def alive(self) -> bool:
        return self.ps.is_running() if self.popen is None else self.popen.poll() is None

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Signal the process, wait, and SIGKILL it if it does not go."""
        if self.popen is None:
            raise RuntimeError(f"{self.name} was not started here; stop it where it was started")
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


def spawn(args: Sequence[str], settings: Settings, name: str) -> Proc:
    """Start `args` with `settings`, output to state_dir/logs/<name>.log, in its own session
    (so a terminal's Ctrl-C reaches only us, and we stop children in order)."""
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(args), env=env_for(settings), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    return Proc(popen, name, log)


def http_ok(url: str) -> bool:
    """True when `url` (on loopback) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def worker_args() -> list[str]:
    # -l info, not warn: at warn Faust's terminal spinner sets the root logger to
    # DEBUG, and every log.debug() in Faust and aiokafka builds a record (~7% CPU).
    return [sys.executable, "-m", "faust", "-A", "agents.worker", "worker", "-l", "info"]


def gateway_args() -> list[str]:
    return [sys.executable, "-m", "infra.cli", "gateway"]


def sim_args() -> list[str]:
    return [sys.executable, "-m", "infra.cli", "sim"]
