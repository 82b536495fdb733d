"""A LoadTestShape from the scenario's `[load] stages` (`--stages` JSON): each stage holds its users,
reached at its spawn rate, for its duration; after the last, the test stops.

A file of its own because Locust uses any shape class it finds: `smslab load` adds this file to
`-f` only when the scenario has stages (`-f loadtests/locustfile.py,loadtests/stages.py`).
"""

from __future__ import annotations

import json

from locust import LoadTestShape


class StagesShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        stages = json.loads(getattr(options, "stages", "[]") or "[]")
        elapsed = self.get_run_time()
        end = 0.0
        for stage in stages:
            end += float(stage["duration_s"])
            if elapsed < end:
                return int(stage["users"]), float(stage["spawn_rate"])
        return None
