"""End to end with every component a real process: API, workers, simulator, Redis, the database.

The merchant drives the API over HTTP; workers send through the fake Mitto; a worker is SIGKILLed the
instant after the provider accepted; the reconcile cron (not the test) resolves what it left behind.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.api import Api, start_worker
from tests.support.lab import Lab, phone_numbers

SHOP = "alpha.myshopify.com"


async def wait_for_status(
    client: httpx.AsyncClient, campaign: int, status: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    detail: dict[str, Any] = {}
    while time.monotonic() < deadline:
        detail = (await client.get(f"/api/campaigns/{campaign}")).json()
        if detail["status"] == status:
            return detail
        await asyncio.sleep(0.25)
    raise AssertionError(f"campaign {campaign} still {detail.get('status')}: {detail.get('counts')}")


async def start_campaign(
    api: Api, lab: Lab, recipients: int, request_id: str
) -> tuple[httpx.AsyncClient, int]:
    client = api.as_shop(SHOP)
    await lab.shop(SHOP, credits=recipients * 2)
    rows = [{"phone": p, "sms_consent": True} for p in phone_numbers(recipients)]
    assert (await client.post("/api/contacts", json={"contacts": rows})).status_code == 200
    campaign = (
        await client.post("/api/campaigns", json={"name": "e2e", "body": "Hello from the lab"})
    ).json()["id"]
    enqueued = await client.post(
        f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "e2e", "X-Request-Id": request_id}
    )
    assert enqueued.status_code == 202
    return client, campaign


async def test_a_campaign_runs_through_the_whole_pipeline(api: Api, lab: Lab, tmp_path: Path) -> None:
    worker = start_worker(lab.settings, tmp_path / "logs")
    try:
        client, campaign = await start_campaign(api, lab, recipients=250, request_id="e2e-happy-path")
        detail = await wait_for_status(client, campaign, "completed")
        assert detail["counts"]["sent"] == 250
        assert detail["credits"] == {
            "reserved": 250,
            "reserved_remaining": 0,
            "reservation_status": "settled",
            "debited": 250,
        }
        health = await api.anonymous().get("/health/full")
        assert (health.status_code, health.json()["checks"]["workers"]["alive"]) == (200, 1)
    finally:
        worker.stop()
    # The request id follows the request into the jobs it caused.
    assert '"request_id": "e2e-happy-path"' in worker.log_path.read_text()
    await lab.assert_holds()


async def test_a_worker_killed_after_the_provider_accepted_is_healed_by_the_reconciler(
    api: Api, lab: Lab, tmp_path: Path
) -> None:
    settings = lab.settings.with_overrides(send_lease_seconds=3.0, lab_allow_unsafe=True)
    doomed = start_worker(
        settings, tmp_path / "logs", "doomed", SMSLAB_FAILPOINTS="send.after_provider_accepted=kill"
    )
    client, campaign = await start_campaign(api, lab, recipients=100, request_id="e2e-kill")
    deadline = time.monotonic() + 20
    while doomed.alive and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert doomed.returncode == -9, "the worker should have been SIGKILLed by the failpoint"
    accepted_before_restart = lab.simulator.counters()["mitto"]["accepted"]
    assert accepted_before_restart >= 50  # at least one batch accepted, its result never written
    healthy = start_worker(settings, tmp_path / "logs", "healthy")
    try:
        detail = await wait_for_status(client, campaign, "completed", timeout=40)
    finally:
        healthy.stop()
    assert detail["counts"]["sent"] == 100
    assert lab.simulator.counters()["mitto"]["accepted"] == 100  # nothing was sent twice
    await lab.assert_holds()
