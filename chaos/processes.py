"""Start, watch, kill and restart the lab's processes (API, workers, simulator, Redis).

Each process is a real OS process in its own session, with its output appended to a log file of its
own, so a kill hits exactly one component and the run folder keeps every process's log. None outlives
the command that started it (`service.lifetime`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.lifetime import bound_to_this_process
from service.settings import Settings, env_name


def smslab_argv(*args: str) -> list[str]:
    """The smslab command as this interpreter runs it (no reliance on PATH or an activated venv)."""
    return [sys.executable, "-m", "chaos.cli", *args]


def service_argv(*args: str) -> list[str]:
    """The service's own command (`python -m service`): what the lab starts its API and workers with, so a
    (re)start imports the service alone, not the harness and the simulator with it."""
    return [sys.executable, "-m", "service", *args]


def provider_secrets(settings: Settings) -> dict[str, str]:
    """The environment that gives the fake providers the service's credentials (never the command line,
    where every local user sees them in `ps`)."""
    return {
        "SMSLAB_MITTO_API_KEY": settings.mitto_api_key,
        "SMSLAB_MITTO_DLR_TOKEN": settings.mitto_dlr_token,
        "SMSLAB_STRIPE_SECRET_KEY": settings.stripe_secret_key,
        "SMSLAB_STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret[0],
        "SMSLAB_SHOPIFY_API_SECRET": settings.shopify_api_secret,
    }


class ProcessFailed(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # starts that had to be SIGKILLed because they did not stop within their grace period (their stacks
    # went to the log first: `dump_stacks`)
    overran_stops: int = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                bound_to_this_process(self.argv),
                # Each start draws its own failpoint sequence (service/failpoints.py: a restart that
                # drew its predecessor's would die on the same hit)
                env={**os.environ, **self.env, env_name("failpoint_stream"): f"{self.name}:{self.starts}"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.cwd,
            )
        finally:
            log.close()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ProcessFailed(f"{self.name} exited with {self.returncode}; last lines:\n{self.tail()}")
            if self.ready_url is None:
                return
            try:
                answer = httpx.get(self.ready_url, timeout=1.0)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code < 500:
                pid = answer.headers.get("x-process-id")
                if pid is None and answer.status_code != 200:
                    # Not ours (our servers name themselves, and answer /health with 200): a server that
                    # holds the port. Ours then fails to bind and exits, which the next turn reports.
                    time.sleep(0.1)
                    continue
                if self._answered_by_this(pid):
                    return
                raise ProcessFailed(
                    f"{self.name}: another process (pid {answer.headers.get('x-process-id')}) answers at "
                    f"{self.ready_url}: its port was taken before it could bind it"
                )
            time.sleep(0.1)
        raise ProcessFailed(f"{self.name} not ready after {timeout:.0f}s; last lines:\n{self.tail()}")

    def _answered_by_this(self, pid: str | None) -> bool:
        """The answer names this process, or one of its descendants (uvicorn's workers); an answer
        without an id (a server that does not say) is taken as it is."""
        if pid is None or not pid.isdigit() or self.process is None:
            return True
        answering = int(pid)
        for _ in range(4):  # the process itself, or up to three generations below it
            if answering == self.process.pid:
                return True
            if answering <= 1:  # reached init: an orphan (a killed API's surviving worker), not ours
                return False
            try:
                answering = int(Path(f"/proc/{answering}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                return True  # no /proc: cannot tell
        return False

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.overran_stops += 1
            self.dump_stacks()
            self.kill()

    def dump_stacks(self, wait_s: float = 0.5) -> None:
        """Ask every process of the component (its session's group: uvicorn's workers, not only their
        supervisor, which ignores the signals) to write where it is stuck to its log (SIGUSR1: threads'
        stacks, SIGUSR2: asyncio tasks'; `service.stack_dumps`, and the simulator's threads), and give
        them a moment to. A process without those handlers dies of the signal, as it was about to."""
        if self.alive:
            assert self.process is not None
            for dump in (signal.SIGUSR1, signal.SIGUSR2):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, dump)
                time.sleep(0.05)  # the threads' stacks first, written at once in C
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait_s)

    def kill(self) -> None:
        """SIGKILL to the whole component: the process and every process it started (its session's
        group: uvicorn's worker processes, Locust's), as when its host dies. No shutdown hook runs, no
        transaction is finished, no job is handed back. Killing the parent alone would leave uvicorn's
        workers serving on the inherited socket as orphans: the "killed" API would go on answering, and
        its restart would fail to bind the port."""
        if self.process is None:
            return
        group = self.process.pid  # started with start_new_session: its pid is its group's id
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        kill_group(group)

    def restart(self, ready_timeout: float = 30.0) -> None:
        self.kill()
        self.start()
        self.wait_ready(ready_timeout)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_members(group: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def kill_group(group: int, timeout: float = 5.0) -> None:
    """SIGKILL every process left in `group`, and wait (up to `timeout`) until none is running: the
    sockets they held are closed, so a restart can bind the same port."""
    if not sys.platform.startswith("linux"):
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _group_members(group) or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def stop_all(processes: list[ManagedProcess], timeout: float = 10.0) -> None:
    """SIGTERM to every process at once, then wait for all: a SAQ worker takes its grace period to stop,
    and stopping one after another would add those up."""
    for process in reversed(processes):
        if process.alive:
            assert process.process is not None
            process.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in reversed(processes):
        process.stop(max(0.1, deadline - time.monotonic()))


def overran_stops(processes: list[ManagedProcess]) -> dict[str, int]:
    """The processes that had to be killed at a stop, and how often (run.json's `stops_overran`)."""
    return {p.name: p.overran_stops for p in processes if p.overran_stops}
