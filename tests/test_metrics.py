"""`/metrics`: each counter moves by what happened, no more, and one scrape shows every process.

An API and a worker share one metrics directory (prometheus_client's multiprocess mode): the worker's
sends appear on the API's scrape, and a second API process answers the same counts. A small campaign,
one delivery report sent twice and a Stripe event with a wrong signature: each counter is then exactly
what they make it, read with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.db.models import CampaignRecipient
from service.metrics import prepare_directory
from tests.support.api import Api, start_api, start_worker
from tests.support.lab import Lab

SHOP = "alpha.myshopify.com"
RECIPIENTS = 3


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels, as Prometheus would read them."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


@pytest.mark.webhooks_to_api
async def test_one_scrape_counts_every_process_and_each_counter_moves_by_what_happened(
    lab: Lab, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    prepare_directory(str(metrics_dir))
    lab = lab.with_settings(metrics_dir=metrics_dir)
    shop_id = await lab.shop(SHOP, credits=RECIPIENTS * 2)
    await lab.contacts(shop_id, RECIPIENTS)
    processes = [
        start_api(lab.settings, tmp_path / "api", port=lab.simulator.target_port),
        start_api(lab.settings, tmp_path / "api-2"),
        start_worker(lab.settings, tmp_path / "worker"),
    ]
    first, second = Api(lab.settings, processes[0]), Api(lab.settings, processes[1])
    try:
        client = first.as_shop(SHOP)
        campaign = (await client.post("/api/campaigns", json={"name": "m", "body": "Hello"})).json()["id"]
        assert (
            await client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "m1"})
        ).status_code == 202
        replay = await client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "m1"})
        assert replay.headers.get("Idempotent-Replayed") == "true"

        async def completed() -> bool:
            detail = (await client.get(f"/api/campaigns/{campaign}")).json()
            return bool(detail["status"] == "completed")

        await wait_until(completed)
        lab.simulator.wait_for_deliveries()  # every report (Sent, then Delivered) answered
        async with lab.sessions() as session:
            message_id, recipient_id = (
                await session.execute(
                    select(CampaignRecipient.provider_message_id, CampaignRecipient.id).limit(1)
                )
            ).one()
        report = {
            "messageId": message_id,
            "reference": f"c{campaign}-r{recipient_id}",
            "status": "Delivered",
            "timestamp": "2026-11-28T12:00:00Z",
        }
        anonymous = first.anonymous()
        url = f"/webhooks/mitto/dlr?token={lab.settings.mitto_dlr_token}"
        for _ in range(2):  # one report of the lab's own, then the very same report again
            assert (await anonymous.post(url, json=report)).status_code == 200
        forged = await anonymous.post(
            "/webhooks/stripe", content=b'{"id":"evt_x"}', headers={"Stripe-Signature": "t=1,v1=00"}
        )
        assert forged.status_code == 400
        scraped = (await anonymous.get("/metrics")).text
        elsewhere = (await second.anonymous().get("/metrics")).text
    finally:
        await first.close()
        await second.close()
        for process in processes:
            process.stop()
    found = samples(scraped)
    assert value(found, "smslab_enqueues_total", outcome="accepted") == 1
    assert value(found, "smslab_enqueues_total", outcome="replayed") == 1
    assert value(found, "smslab_messages_sent_total") == RECIPIENTS  # counted in the worker
    assert value(found, "smslab_credits_debited_total") == RECIPIENTS
    # Sent and Delivered for each message, and the lab's report (a new event: decided on, as stale)
    assert (
        value(found, "smslab_webhook_events_total", provider="mitto", outcome="applied") == 2 * RECIPIENTS + 1
    )
    assert value(found, "smslab_webhook_events_total", provider="mitto", outcome="duplicate") == 1
    assert value(found, "smslab_webhook_events_total", provider="stripe", outcome="rejected") == 1
    assert value(found, "smslab_job_failures_total", function="send_batch") == 0
    enqueue_route = "/api/campaigns/{campaign_id}/enqueue"
    assert value(found, "smslab_http_requests_total", route=enqueue_route, method="POST", status="202") == 2
    assert value(found, "smslab_http_request_duration_seconds_count", route=enqueue_route, method="POST") == 2
    assert not [
        key for key in found if "alpha" in str(key) or "/api/campaigns/1" in str(key)
    ]  # templates only
    # Shared state, read at scrape time from Redis and the database.
    assert value(found, "smslab_stuck_campaigns") == 0
    assert value(found, "smslab_credits_reserved") == 0
    assert value(found, "smslab_wallets_out_of_balance") == 0
    assert ("smslab_queue_jobs", (("state", "queued"),)) in found
    # The other API process reads the same directory and the same stores: the same domain counts.
    other = samples(elsewhere)
    for name in ("smslab_messages_sent_total", "smslab_credits_debited_total", "smslab_webhook_events_total"):
        assert {k: v for k, v in other.items() if k[0] == name} == {
            k: v for k, v in found.items() if k[0] == name
        }


async def test_metrics_token_and_a_port_of_their_own(lab: Lab, tmp_path: Path) -> None:
    from service.embedded_redis import free_port

    port = free_port()
    lab = lab.with_settings(metrics_token="scrape-me-please", metrics_port=port)
    process = start_api(lab.settings, tmp_path / "api")
    api = Api(lab.settings, process)
    try:
        on_api = await api.anonymous().get("/metrics")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as apart:
            refused = await apart.get("/metrics")
            allowed = await apart.get("/metrics", headers={"Authorization": "Bearer scrape-me-please"})
            health = await apart.get("/health")
    finally:
        await api.close()
        process.stop()
    assert on_api.status_code == 404  # with a port of its own, not on the merchants' port
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert "smslab_messages_sent_total" in allowed.text
    assert health.status_code == 200
