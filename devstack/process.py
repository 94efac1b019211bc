"""Process handling shared by every local service: ports, the download cache, start and stop.

Every service of the local stack runs as a child process in its own session
(process group), so stopping it also stops anything it forked. Handles are
registered in a module-wide list and stopped at interpreter exit, which keeps
a failed test run from leaving servers behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

_running: list["ManagedProcess"] = []


class StackError(RuntimeError):
    """A local service could not be fetched, built or started."""


def cache_dir() -> Path:
    """Return the one folder that holds every download and build output of the stack.

    ECHOSEEN_CACHE_DIR overrides the default, ~/.cache/echoseen.
    """
    configured = os.environ.get("ECHOSEEN_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "echoseen"
    base.mkdir(parents=True, exist_ok=True)
    return base


def free_port() -> int:
    """Return a TCP port on the loopback address that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """A child process of the local stack, with its log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ)
        if self.env:
            environment.update(self.env)
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.cwd,
                start_new_session=True,
            )
        _running.append(self)
        log.info("started %s (pid %d), log %s", self.name, self.popen.pid, self.log_path)
        return self

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def detach(self) -> None:
        """Leave the process running when this interpreter exits: take it off the list stopped at exit."""
        if self in _running:
            _running.remove(self)

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``ready`` until it is true; return the seconds it took.

        Fails early, with the end of the log, when the process exits first.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise StackError(
                    f"{self.name} exited with status {self.popen.returncode} before {what}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - readiness probes fail in many ways while a server starts
                pass
            time.sleep(0.2)
        raise StackError(
            f"{self.name} did not reach '{what}' within {timeout_s:.0f} s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        """Send a signal to the whole process group of this service."""
        if self.is_running():
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop with SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.popen is None:
            return
        if self.is_running():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, self.popen.pid, timeout_s)
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        # The group may still hold children after the leader exited.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self in _running:
            _running.remove(self)
        log.info("stopped %s", self.name)


def run_checked(argv: Sequence[str], what: str, cwd: Path | None = None,
                env: Mapping[str, str] | None = None, timeout_s: float = 1800) -> str:
    """Run a setup command to completion; raise StackError with its output when it fails."""
    environment = dict(os.environ)
    if env:
        environment.update(env)
    result = subprocess.run(list(argv), cwd=cwd, env=environment, capture_output=True,
                            text=True, timeout=timeout_s)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise StackError(f"{what} failed (exit status {result.returncode}): {' '.join(argv)}\n{output}")
    return result.stdout


def stop_all() -> None:
    """Stop every service this interpreter started, newest first."""
    for process in reversed(list(_running)):
        try:
            process.stop()
        except Exception:  # noqa: BLE001 - keep stopping the others
            log.exception("failed to stop %s", process.name)


atexit.register(stop_all)
