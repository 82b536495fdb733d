"""`python -m service` (or `smslab-service`): the service's own commands, without the lab.

The same `db`, `api`, `worker`, `token`, `shops` and `credits` commands as `smslab`, from a main module
that imports nothing of the chaos harness or the simulator. A deployment needs nothing else, and the lab
starts its API and workers this way: `smslab api --workers N` spawns each uvicorn worker by importing the
main module again, and `chaos.cli` costs every API (re)start about a second of imports on top of the
service's own (docs/performance.md).
"""

from __future__ import annotations

from service.cli import command_app

app = command_app(
    "smslab-service",
    "The SMS-campaign backend: migrations, the HTTP API, the SAQ workers, operators' commands.",
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
