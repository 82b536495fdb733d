"""Locust's own ceiling for `bench/load.py`: the same number of users, with the same pause between
tasks, against `GET /health` (no database, no authentication, no rate limit), so a load figure can be
read as a ratio of what this Locust, on this machine, can send at all. No history is written.

    locust -f bench/locust_health.py --headless --host http://127.0.0.1:8000 -u 50 -r 50 -t 15s
"""

from __future__ import annotations

import random
from typing import Any

from locust import FastHttpUser, events, task

think = {"s": (0.0, 0.0)}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--think", default="0,0", help="a user's pause between tasks: LOW,HIGH seconds")


@events.init.add_listener
def _init(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        low, _, high = str(options.think).partition(",")
        think["s"] = (float(low or 0), float(high or low or 0))


class HealthUser(FastHttpUser):
    network_timeout = 10.0
    connection_timeout = 5.0

    def wait_time(self) -> float:
        return random.uniform(*think["s"])

    @task
    def health(self) -> None:
        self.client.get("/health", name="/health")
