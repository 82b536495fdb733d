"""The commands stop cleanly, leave nothing running, and never show a secret in `ps`.

Found by hand before the fix: a SIGTERM to `smslab up` left the API, the worker, the simulator and the
embedded `redis-server` running; `smslab api` left its embedded Redis; the simulator got the Stripe
webhook secret on its command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.embedded_redis import free_port
from service.settings import Settings
from simulator.control import allowed
from simulator.http import Request

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc), however deep."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start(argv: list[str], tmp_path: Path, ready_url: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_")}
    env["SMSLAB_VAR_DIR"] = str(tmp_path / "var")
    log = (tmp_path / "out.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ready_url:
        try:
            if httpx.get(ready_url, timeout=1).status_code < 500:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        if ready_url:
            pytest.fail(f"{argv} not ready: {(tmp_path / 'out.log').read_text()[-2000:]}")
    time.sleep(2)  # every child started (the worker reports no readiness)
    return process


SMSLAB = [sys.executable, "-m", "chaos.cli"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_smslab_up_leaves_nothing_running_however_it_is_stopped(tmp_path: Path, how: signal.Signals) -> None:
    api, simulator = free_port(), free_port()
    process = _start(
        [*SMSLAB, "up", "--port", str(api), "--simulator-port", str(simulator)],
        tmp_path,
        f"http://127.0.0.1:{api}/health",
    )
    children = _descendants(process.pid)
    names = " | ".join(_cmdline(pid) for pid in children)
    for part in ("-m service api", "-m service worker", "chaos.cli simulator", "redis-server"):
        assert part in names, names
    secrets = Settings()
    for secret in (
        secrets.shopify_api_secret,
        secrets.stripe_secret_key,
        secrets.stripe_webhook_secret[0],
        secrets.mitto_api_key,
        secrets.mitto_dlr_token,
    ):
        assert secret not in names, "a secret is on a command line, visible in ps"
    process.send_signal(how)
    process.wait(30)
    if how == signal.SIGTERM:
        assert process.returncode == 0
    deadline = time.monotonic() + 15
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(children), [_cmdline(pid) for pid in _alive(children)]


@pytest.mark.parametrize("command", ["api", "worker"])
def test_smslab_api_and_worker_take_their_embedded_redis_with_them(tmp_path: Path, command: str) -> None:
    port = free_port()
    argv = [*SMSLAB, command] + (["--port", str(port)] if command == "api" else [])
    process = _start(argv, tmp_path, f"http://127.0.0.1:{port}/health" if command == "api" else None)
    children = _descendants(process.pid)
    assert any("redis-server" in _cmdline(pid) for pid in children)
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    deadline = time.monotonic() + 15
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(children), [_cmdline(pid) for pid in _alive(children)]


def test_the_simulator_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = _start(
        [*SMSLAB, "simulator", "--port", str(port), "--data-dir", str(tmp_path / "sim")],
        tmp_path,
        f"http://127.0.0.1:{port}/control/health",
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) is not None


def test_the_control_api_answers_loopback_only_unless_given_a_token() -> None:
    def request(client: str, token: str = "") -> Request:
        headers = {"x-control-token": token} if token else {}
        return Request("GET", "/control/health", {}, headers, b"", client=client)

    assert allowed(request("127.0.0.1"), None)
    assert allowed(request("::1"), None)
    assert not allowed(request("10.1.2.3"), None)
    assert not allowed(request("10.1.2.3", "wrong"), "s3cret-token")
    assert allowed(request("10.1.2.3", "s3cret-token"), "s3cret-token")


def test_a_kill_takes_the_whole_process_group_and_an_orphan_is_not_ready(tmp_path: Path) -> None:
    """`kill_api` with `api_workers = 2`: SIGKILL to uvicorn's supervisor alone left its two workers
    serving the port as orphans (the killed API went on answering, and its restart could not bind). A
    kill now takes the process and everything it started; and an answer from an orphan (whose parent is
    init) is never taken as the restarted process's."""
    from chaos.processes import ManagedProcess

    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    process = ManagedProcess("parent", [sys.executable, "-c", script], tmp_path / "parent.log")
    process.start()
    assert process.pid is not None
    deadline = time.monotonic() + 10
    while not _descendants(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = _descendants(process.pid)
    process.kill()
    assert not _alive({child})
    orphaned = ManagedProcess("again", [sys.executable, "-c", "pass"], tmp_path / "again.log")
    orphaned.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert not orphaned._answered_by_this("1")  # init answers: not this process
        assert orphaned._answered_by_this(str(orphaned.process.pid))
    finally:
        orphaned.process.kill()
        orphaned.process.wait()


def test_healing_restarts_only_processes_with_failpoints_or_down(tmp_path: Path) -> None:
    """A clean running process is left alone: it must recover by itself, and restarting it healed
    nothing (chaos/settle.py)."""
    from chaos.processes import ManagedProcess, stop_all
    from chaos.settle import processes_to_restart

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    clean = ManagedProcess("clean", sleeper, tmp_path / "clean.log")
    faulted = ManagedProcess("faulted", sleeper, tmp_path / "f.log", {"SMSLAB_FAILPOINTS": "send.x=1*raise"})
    healed = ManagedProcess("healed", sleeper, tmp_path / "h.log", {"SMSLAB_FAILPOINTS": ""})
    dead = ManagedProcess("dead", [sys.executable, "-c", "pass"], tmp_path / "dead.log")
    processes = [clean, faulted, healed, dead]
    try:
        for process in processes:
            process.start()
        assert dead.process is not None
        dead.process.wait(timeout=30)
        assert [p.name for p in processes_to_restart(processes)] == ["faulted", "dead"]
    finally:
        stop_all(processes, 5.0)


STUCK_AT_STOP = """
import asyncio, signal
from service import stack_dumps

async def wait_for_a_lock_that_never_comes():
    await asyncio.Event().wait()

async def main():
    stack_dumps.install()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)  # a stop that hangs
    print("ready", flush=True)
    await asyncio.create_task(wait_for_a_lock_that_never_comes(), name="the-stuck-one")

asyncio.run(main())
"""


def test_a_process_that_will_not_stop_leaves_where_it_hung_in_its_log_and_is_killed(tmp_path: Path) -> None:
    """A quick run's stop once took 10 s instead of one with no line saying why: a process that does
    not stop within its grace period now writes its threads' and tasks' stacks to its log (SIGUSR1)
    before the SIGKILL, and the run counts it."""
    from chaos.processes import ManagedProcess, overran_stops, stop_all

    log = tmp_path / "stuck.log"
    stuck = ManagedProcess("stuck", [sys.executable, "-c", STUCK_AT_STOP], log, cwd=Path(__file__).parents[1])
    polite = ManagedProcess(
        "polite", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "p.log"
    )
    stuck.start()
    polite.start()
    try:
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_all([polite, stuck], timeout=1.0)
        assert not stuck.alive
        assert not polite.alive
        assert overran_stops([polite, stuck]) == {"stuck": 1}
        written = log.read_text()
        assert "wait_for_a_lock_that_never_comes" in written  # the task, where it awaits
        assert "the-stuck-one" in written
        assert "Current thread" in written or "Thread 0x" in written  # faulthandler's thread stacks
    finally:
        stuck.kill()
        polite.kill()


def test_a_server_that_holds_the_port_is_not_taken_for_the_process_being_started(tmp_path: Path) -> None:
    """A process whose port another server holds is not ready because that server answers: our servers
    name themselves (X-Process-Id) and answer /health 200; a foreign 404 without a name was once taken as
    ready, and the test then talked to that server."""
    from chaos.processes import ManagedProcess, ProcessFailed

    port = free_port()
    squatter = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 404:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        never_binds = ManagedProcess(
            "api",
            [sys.executable, "-c", "import time; time.sleep(30)"],
            tmp_path / "api.log",
            ready_url=f"http://127.0.0.1:{port}/health",
        )
        never_binds.start()
        try:
            with pytest.raises(ProcessFailed, match="not ready"):
                never_binds.wait_ready(timeout=1.5)
        finally:
            never_binds.kill()
    finally:
        squatter.kill()
        squatter.wait()


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10_000 <= free_port() < low for _ in range(20))
