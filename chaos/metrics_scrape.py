"""The lab's Prometheus: `/metrics` scraped every second of a run into `metrics.jsonl` in the run folder.

Each line is one scrape: `{"t": wall time, "samples": {"name{label=value,...}": value}}`, the service's
own `smslab_*` samples without histogram buckets. Notebooks plot them; the checker compares the last
scrape with ground truth (`chaos.checker.observations`): where the service's counters disagree with
what really happened, its metrics are lying, and the verdict says by how much.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

METRICS_FILE = "metrics.jsonl"
INTERVAL_S = 1.0


def parse_exposition(text: str) -> dict[str, float]:
    """`name{labels}` -> value for the service's samples (buckets left out: the sums and counts stay)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("smslab_") or sample.name.endswith("_bucket"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return samples


class MetricsScraper:
    def __init__(self, api_url: str, run_dir: Path) -> None:
        self.api_url = api_url
        self.path = run_dir / METRICS_FILE
        self.scrapes = 0
        self._task: asyncio.Task[None] | None = None

    async def scrape_once(self, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.get("/metrics")
        except httpx.HTTPError:
            return False  # the API is down (a kill): that second has no scrape
        if response.status_code != 200:
            return False
        line = {"t": round(time.time(), 3), "samples": parse_exposition(response.text)}
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        self.scrapes += 1
        return True

    async def _loop(self) -> None:
        async with httpx.AsyncClient(base_url=self.api_url, timeout=2) as client:
            while True:
                await self.scrape_once(client)
                await asyncio.sleep(INTERVAL_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """The last scrape, after settling: the one the checker compares with ground truth."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5) as client:
            for _ in range(3):
                if await self.scrape_once(client):
                    return
                await asyncio.sleep(0.5)


def last_scrape(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            last = json.loads(line)
        except ValueError:
            continue
    return last
