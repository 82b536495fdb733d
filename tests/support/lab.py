"""`Lab`: one test's service, wired to real infrastructure, with helpers that read like the domain.

Domain-level tests drive the service's own functions in-process (enqueue, send a batch, reconcile) so
they can put a crash or a delay at an exact point; HTTP-level tests start the API as a real process.
Either way the verdict comes from `chaos.checker` reading the simulator's ledger and the database.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from stripe import StripeClient

from chaos.checker import (
    i1_single_acceptance,
    i2_nothing_stuck,
    i3_debits_match,
    i4_credits_conserved,
    i5_payments_once,
    i7_delivery_state,
)
from chaos.checker.evidence import (
    load_acceptances,
    load_delivery_attempts,
    load_reports,
    load_snapshot,
    load_stripe_truth,
)
from chaos.checker.result import CheckResult
from service.billing.api import PurchaseView
from service.billing.checkout import create_checkout, create_stripe_client, stripe_http_client
from service.campaigns import drafts
from service.campaigns.enqueue import EnqueueOutcome, enqueue_campaign
from service.contacts.upsert import upsert_contacts
from service.db.models import Campaign, CampaignRecipient, Wallet
from service.db.session import create_engine, create_sessionmaker
from service.queue import create_queue
from service.reconcile.reconciler import ReconcileReport, reconcile_once
from service.sending.batch import BatchReport, send_batch
from service.sending.mitto import MittoClient
from service.settings import Settings
from service.shops import install_shop
from service.wallet.ledger import grant_credits
from service.webhooks import mitto, shopify, stripe_events
from simulator.ledger import read_ledger
from simulator.mitto import ACCEPTED_LEDGER
from tests.support.infra import SimulatorProcess


def phone_numbers(count: int, start: int = 0) -> list[str]:
    """Distinct valid E.164 numbers (US area codes x 555 exchange)."""
    numbers = []
    for area, line in itertools.product(range(201, 990), range(10_000)):
        candidate = f"+1{area}555{line:04d}"
        if start:
            start -= 1
            continue
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate)):
            numbers.append(candidate)
            if len(numbers) == count:
                return numbers
    raise ValueError("not enough numbers")


def shopify_time(seconds_ago: float = 0.0) -> str:
    """An `X-Shopify-Triggered-At` value that many seconds before now (webhooks older than the
    service's horizon are refused, so tests speak of times relative to now)."""
    moment = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Lab:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    mitto: MittoClient
    simulator: SimulatorProcess
    redis_url: str
    tmp: Path
    _clients: list[MittoClient] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, simulator: SimulatorProcess, redis_url: str, tmp: Path) -> Lab:
        engine = create_engine(settings, "test")
        return cls(
            settings, engine, create_sessionmaker(engine), MittoClient(settings), simulator, redis_url, tmp
        )

    async def close(self) -> None:
        for client in [self.mitto, *self._clients]:
            await client.aclose()
        await self.engine.dispose()

    def unsafe(self, *safeguards_off: str, **overrides: Any) -> Lab:
        """The same lab with safeguards switched off (and other settings changed): the lab's unsafe mode."""
        return self.with_settings(
            lab_allow_unsafe=True, safeguards_off=frozenset(safeguards_off), **overrides
        )

    def with_settings(self, **overrides: Any) -> Lab:
        settings = self.settings.with_overrides(**overrides)
        mitto = MittoClient(settings)
        self._clients.append(mitto)
        return Lab(
            settings,
            self.engine,
            self.sessions,
            mitto,
            self.simulator,
            self.redis_url,
            self.tmp,
            self._clients,
        )

    # --- the world -------------------------------------------------------------------------------
    async def shop(self, domain: str = "alpha.myshopify.com", credits: int = 0) -> int:
        async with self.sessions() as session:
            shop = await install_shop(session, domain)
            if credits:
                await grant_credits(
                    session, shop_id=shop.id, amount=credits, idempotency_key=f"seed:{domain}"
                )
            return shop.id

    async def contacts(self, shop_id: int, count: int, consent: bool = True, start: int = 0) -> list[str]:
        phones = phone_numbers(count, start)
        rows = [{"phone_e164": p, "sms_consent": consent} for p in phones]
        async with self.sessions() as session:
            await upsert_contacts(session, shop_id, rows)
        return phones

    async def campaign(self, shop_id: int, body: str = "Spring sale: 20% off today") -> int:
        async with self.sessions() as session:
            campaign = await drafts.create_campaign(session, shop_id, "test campaign", body)
            return int(campaign.id)

    async def sending_campaign(
        self, recipients: int, credits: int | None = None, domain: str = "alpha.myshopify.com"
    ) -> tuple[int, int]:
        """A shop with credits and contacts, and one campaign enqueued (no jobs queued). (shop, campaign)"""
        shop_id = await self.shop(domain, credits if credits is not None else recipients * 2)
        await self.contacts(shop_id, recipients)
        campaign_id = await self.campaign(shop_id)
        await self.enqueue(shop_id, campaign_id)
        return shop_id, campaign_id

    # --- the pipeline ---------------------------------------------------------------------------
    async def enqueue(
        self, shop_id: int, campaign_id: int, key: str | None = None, body: Any = None
    ) -> EnqueueOutcome:
        async with self.sessions() as session:
            return await enqueue_campaign(
                session,
                self.settings,
                shop_id=shop_id,
                campaign_id=campaign_id,
                idempotency_key=key,
                request_body=body,
            )

    async def send(self, campaign_id: int, batch_no: int = 0) -> BatchReport:
        async with self.sessions() as session:
            return await send_batch(
                session, self.settings, self.mitto, campaign_id=campaign_id, batch_no=batch_no
            )

    async def send_all(self, campaign_id: int) -> None:
        campaign = await self.campaign_row(campaign_id)
        for batch_no in range(campaign.batch_count):
            await self.send(campaign_id, batch_no)

    async def reconcile(self, with_queue: bool = False) -> ReconcileReport:
        queue = create_queue(self.settings, self.redis_url) if with_queue else None
        try:
            if queue:
                await queue.connect()
            return await reconcile_once(self.sessions, self.settings, self.mitto, queue)
        finally:
            if queue:
                await queue.disconnect()

    async def expire_leases(self, campaign_id: int) -> None:
        """Move every lease of the campaign into the past, as if the lease time had passed."""
        from datetime import timedelta

        from service.db.models import utcnow

        async with self.sessions() as session, session.begin():
            await session.execute(
                update(CampaignRecipient)
                .where(
                    CampaignRecipient.campaign_id == campaign_id,
                    CampaignRecipient.lease_expires_at.is_not(None),
                )
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )

    # --- reading ---------------------------------------------------------------------------------
    async def campaign_row(self, campaign_id: int) -> Campaign:
        async with self.sessions() as session, session.begin():
            campaign = await session.scalar(select(Campaign).where(Campaign.id == campaign_id))
            assert campaign is not None
            return campaign

    async def recipient_statuses(self, campaign_id: int) -> dict[str, int]:
        async with self.sessions() as session, session.begin():
            rows = await session.execute(
                select(CampaignRecipient.status).where(CampaignRecipient.campaign_id == campaign_id)
            )
            counts: dict[str, int] = {}
            for (status,) in rows:
                counts[status] = counts.get(status, 0) + 1
            return counts

    async def wallet(self, shop_id: int) -> tuple[int, int]:
        async with self.sessions() as session, session.begin():
            wallet = await session.scalar(select(Wallet).where(Wallet.shop_id == shop_id))
            assert wallet is not None
            return wallet.balance, wallet.reserved

    async def verdict(self) -> dict[str, CheckResult]:
        """I1-I5 and I7 from ground truth: the simulator's ledgers and the database."""
        data = self.simulator.data_dir
        acceptances = load_acceptances(data)
        deliveries = load_delivery_attempts(data)
        async with self.sessions() as session:
            snapshot = await load_snapshot(session)
        results = [
            i1_single_acceptance.check(acceptances, snapshot),
            i2_nothing_stuck.check(snapshot),
            i3_debits_match.check(acceptances, snapshot),
            i4_credits_conserved.check(snapshot),
            i5_payments_once.check(
                load_stripe_truth(data),
                snapshot,
                any(d.provider == "stripe" and d.acknowledged for d in deliveries),
            ),
            i7_delivery_state.check(lambda: load_reports(data), deliveries, snapshot),
        ]
        return {r.id: r for r in results}

    # --- providers' webhooks, delivered in-process (the tests act as the provider's retries) ----------
    def stripe_client(self) -> StripeClient:
        client = create_stripe_client(self.settings, stripe_http_client())
        return client

    async def checkout(self, shop_id: int, credits: int = 1000, key: str | None = None) -> dict[str, Any]:
        """What `POST /api/billing/checkout` would answer."""
        async with self.sessions() as session:
            billing = await create_checkout(
                session,
                self.settings,
                self.stripe_client(),
                shop_id=shop_id,
                shop_domain="alpha.myshopify.com",
                credits=credits,
                client_key=key,
            )
        return dict(msgspec.to_builtins(PurchaseView.of(billing)))

    def pay(self, session_id: str, asynchronous: bool = False, succeed: bool = True) -> None:
        self.simulator.control(
            "POST", f"/stripe/sessions/{session_id}/pay", json={"async": asynchronous, "succeed": succeed}
        )

    def refund(self, session_id: str, amount: int | None = None) -> dict[str, Any]:
        body = {} if amount is None else {"amount": amount}
        return dict(self.simulator.control("POST", f"/stripe/sessions/{session_id}/refund", json=body))

    def stripe_events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        events = self.simulator.control("GET", "/stripe/events")["events"]
        return [e for e in events if event_type is None or e["type"] == event_type]

    async def deliver_stripe(self, event: dict[str, Any]) -> str:
        async with self.sessions() as session:
            return (await stripe_events.handle(session, self.settings, self.stripe_client(), event)).outcome

    async def deliver_shopify(
        self,
        topic: str,
        payload: dict[str, Any],
        event_id: str,
        triggered_at: str | None = None,
        shop: str = "alpha.myshopify.com",
    ) -> str:
        headers = {
            "x-shopify-topic": topic,
            "x-shopify-shop-domain": shop,
            "x-shopify-event-id": event_id,
            "x-shopify-triggered-at": triggered_at or shopify_time(),
        }
        async with self.sessions() as session:
            return (
                await shopify.handle(session, self.settings, headers, json.dumps(payload).encode())
            ).outcome

    async def deliver_report(
        self, message_id: str, reference: str, status: str, timestamp: str = "t0"
    ) -> str:
        body = {
            "messageId": message_id,
            "reference": reference,
            "status": status,
            "errorCode": None,
            "timestamp": timestamp,
        }
        return (await mitto.handle(self.sessions, self.settings, json.dumps(body).encode())).outcome

    def accepted_messages(self) -> list[dict[str, Any]]:
        return list(read_ledger(self.simulator.data_dir / ACCEPTED_LEDGER))

    async def assert_holds(self, *invariants: str) -> dict[str, CheckResult]:
        verdict = await self.verdict()
        for invariant in invariants or tuple(verdict):
            result = verdict[invariant]
            assert result.valid is True, f"{invariant} violated: {result.counts} {result.witnesses[:3]}"
        return verdict
