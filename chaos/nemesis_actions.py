"""What each nemesis action does to a run: the table `chaos/nemesis.py` plays its timeline from.

`nemesis.py` decides when (the plan, drawn from the seed) and plays it; this module says what: for each
action, the function that injects the fault and the one that undoes it (restart, heal), each returning one
line of outcome for `nemesis.jsonl`. A new fault is one entry in `NemesisActions.table`.

The supervisor lives here too, because it must leave alone exactly the processes these actions hold down:
a process a failpoint killed is restarted at once, one the nemesis killed stays down for its hold time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import asyncpg

from chaos.environment import Services, postgres_dsn
from chaos.nemesis import Action, Nemesis, NemesisEvent
from chaos.processes import ManagedProcess
from chaos.proxy import Proxy, Toxic
from service.embedded_redis import EmbeddedRedis


class NemesisActions:
    """The faults the nemesis can inject into one run's processes, Redis, database and proxies."""

    def __init__(
        self,
        services: Services,
        proxies: Mapping[str, Proxy],
        redis: EmbeddedRedis | None,
        database_url: str | None,
        database_application_name: str,
    ) -> None:
        self.services = services
        self.proxies = proxies
        self.redis = redis  # a scenario that restarts Redis always gets the lab's own
        self.database_url = database_url  # as given (None: SQLite, no connections to cut)
        self.database_application_name = database_application_name
        self._workers = {p.name: p for p in services.workers}
        self.held_down: set[str] = set()  # processes the nemesis killed and will restart itself

    def table(self) -> dict[str, tuple[Action, Action | None]]:
        """Each action's start and its undo (None: nothing to undo)."""
        return {
            "kill_worker": (self.kill, self.restart),
            "kill_api": (self.kill, self.restart),
            "restart_redis": (self.kill_redis, self.start_redis),
            "cut_db_connections": (self.cut, None),
            "toxic": (self.add_toxic, self.remove_toxic),
        }

    def _process(self, event: NemesisEvent) -> ManagedProcess:
        return self.services.api if event.target == "api" else self._workers[event.target]

    async def kill(self, event: NemesisEvent) -> str:
        process = self._process(event)
        self.held_down.add(process.name)
        pid = process.pid
        process.kill()
        return f"SIGKILL pid {pid}"

    async def restart(self, event: NemesisEvent) -> str:
        process = self._process(event)
        self.held_down.discard(process.name)
        if process.alive:
            return f"already restarted as pid {process.pid}"
        process.start()
        await asyncio.to_thread(process.wait_ready, 60)
        return f"restarted as pid {process.pid}"

    async def kill_redis(self, event: NemesisEvent) -> str:
        assert self.redis is not None
        self.redis.kill()
        return "SIGKILL redis-server: every queued job lost"

    async def start_redis(self, event: NemesisEvent) -> str:
        assert self.redis is not None
        await asyncio.to_thread(self.redis.start)
        return f"redis-server up again on port {self.redis.port}, empty"

    async def cut(self, event: NemesisEvent) -> str:
        return await terminate_backends(self.database_url, self.database_application_name)

    async def add_toxic(self, event: NemesisEvent) -> str:
        toxic = Toxic.parse(event.params["toxic"])
        self.proxies[event.target].add(toxic)
        return f"{toxic.type} on {event.target} ({toxic.stream})"

    async def remove_toxic(self, event: NemesisEvent) -> str:
        self.proxies[event.target].remove(Toxic.parse(event.params["toxic"]).name)
        return "removed"

    async def supervise(self, nemesis: Nemesis, started: float) -> None:
        """Restart a service process that died on its own (a failpoint's SIGKILL), as systemd would.

        A process the nemesis killed is left down for the plan's hold time; the nemesis restarts it.
        """
        while True:
            for process in self.services.service:
                if process.alive or process.name in self.held_down:
                    continue
                code = process.returncode
                process.start()
                nemesis.record(
                    started, "crash", process.name, f"exited {code}; restarted as pid {process.pid}"
                )
            await asyncio.sleep(0.25)


async def terminate_backends(database_url: str | None, database_application_name: str) -> str:
    """End the PostgreSQL connections of this run's service processes, and no one else's."""
    if database_url is None:
        return "skipped: not PostgreSQL"
    plain = postgres_dsn(database_url)
    name = database_application_name
    connection = await asyncpg.connect(plain, server_settings={"application_name": f"{name}-nemesis"})
    try:
        # The service processes of this run only: not the harness's own reads, not anyone else's.
        count = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND starts_with(application_name, $1) "
            "AND application_name <> ALL($2::text[]) AND pid <> pg_backend_pid()",
            f"{name}-",
            [f"{name}-harness", f"{name}-nemesis"],
        )
    finally:
        await connection.close()
    return f"terminated {count} service connections"
