"""`Lab`: one test's service, wired to real infrastructure, with helpers that read like the domain.

Domain-level tests drive the service's own functions in-process (enqueue, send a batch, reconcile) so
they can put a crash or a delay at an exact point; HTTP-level tests start the API as a real process.
Either way the verdict comes from `chaos.checker` reading the simulator's ledger and the database.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chaos.checker import i1_single_acceptance, i2_nothing_stuck, i3_debits_match, i4_credits_conserved
from chaos.checker.evidence import load_acceptances, load_snapshot
from chaos.checker.result import CheckResult
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
        engine = create_engine(settings, application_name="smslab-test")
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
            return campaign.id

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
        """I1-I4 from ground truth: the simulator's ledger and the database."""
        acceptances = load_acceptances(self.simulator.data_dir)
        async with self.sessions() as session:
            snapshot = await load_snapshot(session)
        results = [
            i1_single_acceptance.check(acceptances, snapshot),
            i2_nothing_stuck.check(snapshot),
            i3_debits_match.check(acceptances, snapshot),
            i4_credits_conserved.check(snapshot),
        ]
        return {r.id: r for r in results}

    async def assert_holds(self, *invariants: str) -> dict[str, CheckResult]:
        verdict = await self.verdict()
        for invariant in invariants or tuple(verdict):
            result = verdict[invariant]
            assert result.valid is True, f"{invariant} violated: {result.counts} {result.witnesses[:3]}"
        return verdict
