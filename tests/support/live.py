"""A live service that has done a little of everything an operator's runbook and alert look at.

The API and a worker run as real processes sharing one metrics directory (as `smslab up` runs them), the
simulator delivers its webhooks to the API, and a small workload leaves a row in every table the runbooks
query and a sample of every counter the alerts use: a campaign sent (its first batch job failing once
after the provider accepted, the reconciler resolving the claim by lookup), an enqueue replayed, a
purchase paid and partly refunded, a Shopify customer created, exported and erased, a forged Stripe
signature, one shop over its `reports` budget, and a phone number as a client's request id.

`facts` holds the ids a runbook's placeholders stand for (`:campaign_id`, `$REFERENCE`, ...), read back
from the database, so each runbook step can be run against real rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chaos.processes import ManagedProcess
from service.db.models import (
    BillingRefund,
    BillingTransaction,
    CampaignRecipient,
    Contact,
    PrivacyRequest,
    RecipientStatus,
    WebhookEvent,
)
from service.metrics import prepare_directory
from service.rate_limits import RouteClass
from service.settings import settings_as_env
from tests.support.api import Api, start_api, start_worker
from tests.support.lab import Lab

SHOP = "alpha.myshopify.com"
NOISY_SHOP = "noisy.myshopify.com"
CUSTOMER_ID = 42
EMAIL, PHONE = "ada@example.com", "+12025550143"
CUSTOMER = {
    "id": CUSTOMER_ID,
    "email": EMAIL,
    "phone": PHONE,
    "first_name": "Ada",
    "sms_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
}
# Every class out of reach but `reports`, which the noisy shop exceeds on its third list.
LIMITS = ",".join(
    f"{c.value}={'2/minute burst=2' if c is RouteClass.REPORTS else '100000/minute'}" for c in RouteClass
)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


@dataclass
class LiveService:
    lab: Lab
    api: Api
    processes: list[ManagedProcess]
    log_dir: Path
    facts: dict[str, Any] = field(default_factory=dict)

    async def scrape(self) -> str:
        response = await self.api.anonymous().get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def env(self, **extra: str) -> dict[str, str]:
        """The service's own environment (its SMSLAB_* settings), as an operator's shell on its host has
        it, and the runbooks' variables for the facts of this run."""
        return {
            **settings_as_env(self.lab.settings),
            "API": self.api.base_url,
            "LOGS": str(self.log_dir),
            "SIMULATOR": self.lab.simulator.base_url,
            "SHOP_DOMAIN": SHOP,
            "CAMPAIGN_ID": str(self.facts["campaign_id"]),
            "REFERENCE": self.facts["reference"],
            **extra,
        }


async def _workload(service: LiveService) -> None:
    lab, api = service.lab, service.api
    simulator = lab.simulator
    shop_id = await lab.shop(SHOP, credits=100)
    simulator.control(
        "POST", "/shopify/webhooks", json={"shop": SHOP, "topic": "customers/create", "payload": CUSTOMER}
    )
    assert simulator.wait_for_deliveries()["acknowledged"] == 1
    await lab.contacts(shop_id, 3)
    client = api.as_shop(SHOP)
    campaign = (await client.post("/api/campaigns", json={"name": "spring", "body": "Hello"})).json()["id"]
    for _ in range(2):  # the second is answered from the stored response
        enqueued = await client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "k1"})
        assert enqueued.status_code == 202, enqueued.text

    async def completed() -> bool:
        detail = (await client.get(f"/api/campaigns/{campaign}")).json()
        return bool(detail["status"] == "completed")

    await wait_until(completed)
    checkout = (await client.post("/api/billing/checkout", json={"credits": 1000})).json()
    lab.pay(checkout["session_id"])
    lab.refund(checkout["session_id"], 800)
    simulator.wait_for_deliveries()
    request = {
        "shop_id": 1,
        "shop_domain": SHOP,
        "customer": {"id": CUSTOMER_ID, "email": EMAIL, "phone": PHONE},
    }
    for topic, payload in [
        ("customers/data_request", request),
        ("customers/redact", {**request, "orders_to_redact": []}),
    ]:
        simulator.control(
            "POST", "/shopify/webhooks", json={"shop": SHOP, "topic": topic, "payload": payload}
        )
    counters = simulator.wait_for_deliveries()
    assert counters["acknowledged"] >= 5, counters
    forged = await api.anonymous().post(
        "/webhooks/stripe", content=b'{"id":"evt_x"}', headers={"Stripe-Signature": "t=1,v1=00"}
    )
    assert forged.status_code == 400
    noisy = api.as_shop(NOISY_SHOP)
    statuses = [(await noisy.get("/api/contacts")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429], statuses
    # A client whose correlation id is a phone number: every line of its request carries it, masked and
    # counted as personal data found in text.
    traced = await client.get("/api/wallet", headers={"X-Request-Id": PHONE.lstrip("+")})
    assert traced.status_code == 200
    await _read_facts(service, campaign, checkout["session_id"])


async def _read_facts(service: LiveService, campaign_id: int, session_id: str) -> None:
    async with service.lab.sessions() as session, session.begin():
        recipient_id, message_id = (
            await session.execute(
                select(CampaignRecipient.id, CampaignRecipient.provider_message_id)
                .where(
                    CampaignRecipient.campaign_id == campaign_id,
                    CampaignRecipient.provider_message_id.is_not(None),
                )
                .order_by(CampaignRecipient.id)
                .limit(1)
            )
        ).one()
        charge_id = await session.scalar(
            select(WebhookEvent.subject).where(WebhookEvent.event_type == "charge.refunded")
        )
        refund_id = await session.scalar(
            select(BillingRefund.refund_id)
            .join(BillingTransaction, BillingTransaction.id == BillingRefund.billing_id)
            .where(BillingTransaction.provider_ref == session_id)
        )
        contact_row = await session.scalar(select(Contact.id).order_by(Contact.id).limit(1))
        event_row = await session.scalar(
            select(WebhookEvent.id)
            .where(WebhookEvent.provider == "shopify")
            .order_by(WebhookEvent.id)
            .limit(1)
        )
        request_row = await session.scalar(
            select(PrivacyRequest.id).where(PrivacyRequest.kind == "data_request").limit(1)
        )
        sent = await session.scalar(
            select(CampaignRecipient.status).where(CampaignRecipient.id == recipient_id)
        )
    assert sent in (RecipientStatus.SENT, RecipientStatus.DELIVERED), sent
    for fact in (charge_id, refund_id, contact_row, event_row, request_row):
        assert fact, "the workload left a row of each kind"
    service.facts.update(
        shop_domain=SHOP,
        campaign_id=campaign_id,
        id=campaign_id,
        recipient_id=recipient_id,
        reference=f"c{campaign_id}-r{recipient_id}",
        message_id=message_id,
        session_id=session_id,
        charge_id=charge_id,
        refund_id=refund_id,
        customer_id=CUSTOMER_ID,
        contact_row=contact_row,
        event_row=event_row,
        request_row=request_row,
    )


@asynccontextmanager
async def live_service(lab: Lab, tmp_path: Path) -> AsyncIterator[LiveService]:
    """The service running, after the workload; stopped afterwards. The test needs
    `@pytest.mark.webhooks_to_api` (the simulator's webhooks go to this API)."""
    metrics_dir = tmp_path / "metrics"
    prepare_directory(str(metrics_dir))
    lab = lab.with_settings(metrics_dir=metrics_dir, rate_limits=LIMITS)
    log_dir = tmp_path / "logs"
    # The worker's first send fails after the provider accepted (a job failure), its claim is left to
    # the reconciler once a short lease expires, and the lookup finds the messages sent.
    crashing_once = lab.settings.with_overrides(send_lease_seconds=3.0, lab_allow_unsafe=True)
    processes = [
        start_api(lab.settings, log_dir, port=lab.simulator.target_port),
        start_worker(crashing_once, log_dir, SMSLAB_FAILPOINTS="send.after_provider_accepted=raise*1"),
    ]
    service = LiveService(lab, Api(lab.settings, processes[0]), processes, log_dir)
    try:
        await _workload(service)
        yield service
    finally:
        await service.api.close()
        for process in processes:
            process.stop()
