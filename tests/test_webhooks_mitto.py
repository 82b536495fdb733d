"""Mitto delivery reports: forward only, never lost, even when they beat the send's own answer (I7)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from service import failpoints, safeguards
from service.db.models import CampaignRecipient, PendingDeliveryReport, WebhookEvent
from service.failpoints import SimulatedCrash
from tests.support.api import Api, problem, start_api
from tests.support.lab import Lab


async def recipients_by_message(lab: Lab) -> dict[str, tuple[str, str | None]]:
    async with lab.sessions() as session, session.begin():
        rows = await session.execute(
            select(
                CampaignRecipient.provider_message_id,
                CampaignRecipient.status,
                CampaignRecipient.provider_status,
            )
        )
        return {mid: (status, provider) for mid, status, provider in rows if mid}


@pytest.mark.webhooks_to_api(dlr_final="Delivered=3,Undeliverable=1,Expired=1")
async def test_reports_from_the_fake_mitto_settle_every_message(api: Api, lab: Lab) -> None:
    shop_id, campaign_id = await lab.sending_campaign(recipients=60)
    await lab.send_all(campaign_id)
    lab.simulator.wait_for_deliveries()
    counts = await lab.recipient_statuses(campaign_id)
    assert sum(counts.values()) == 60
    assert counts.get("sent", 0) == 0
    assert {"delivered", "undelivered", "expired"} >= set(counts)
    detail = (await api.as_shop().get(f"/api/campaigns/{campaign_id}")).json()
    assert detail["counts"]["delivered"] == counts["delivered"]  # the campaign's counts follow
    assert await lab.wallet(shop_id) == (60, 0)  # delivery does not change what was debited
    await lab.assert_holds()


async def test_reports_only_move_forward(lab: Lab) -> None:
    _, campaign_id = await lab.sending_campaign(recipients=2)
    await lab.send(campaign_id)
    first, second = lab.accepted_messages()
    # Final before intermediate, duplicates, and a second final: the first final stands.
    for status in ("Delivered", "Sent", "Delivered", "Expired"):
        await lab.deliver_report(first["message_id"], first["reference"], status, timestamp=status)
    await lab.deliver_report(second["message_id"], second["reference"], "Buffered")
    states = await recipients_by_message(lab)
    assert states[first["message_id"]] == ("delivered", "Delivered")
    assert states[second["message_id"]] == ("sent", "Buffered")


async def test_without_forward_only_a_late_report_regresses_the_status(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.DELIVERY_REPORTS_FORWARD_ONLY)
    _, campaign_id = await unsafe.sending_campaign(recipients=1)
    await unsafe.send(campaign_id)
    [message] = unsafe.accepted_messages()
    await unsafe.deliver_report(message["message_id"], message["reference"], "Delivered", "t1")
    await unsafe.deliver_report(message["message_id"], message["reference"], "Sent", "t0")
    assert (await recipients_by_message(unsafe))[message["message_id"]] == ("sent", "Sent")


async def early_reports(lab: Lab, api_settings_lab: Lab) -> int:
    """The worker dies after the provider accepted; the provider's reports arrive before any record."""
    process = start_api(api_settings_lab.settings, lab.tmp / "api", port=lab.simulator.target_port)
    try:
        _, campaign_id = await lab.sending_campaign(recipients=20)
        with (
            failpoints.armed("send.after_provider_accepted", "raise", count=1),
            pytest.raises(SimulatedCrash),
        ):
            await lab.send(campaign_id)
        lab.simulator.wait_for_deliveries()  # every report delivered: none could be matched yet
        await lab.expire_leases(campaign_id)
        await lab.reconcile()  # resolves the claim by lookup and records the message ids
        return campaign_id
    finally:
        process.stop()


@pytest.mark.webhooks_to_api
async def test_reports_that_beat_the_send_record_are_kept_and_applied(lab: Lab) -> None:
    campaign_id = await early_reports(lab, lab)
    assert await lab.recipient_statuses(campaign_id) == {"delivered": 20}
    async with lab.sessions() as session, session.begin():
        assert await session.scalar(select(PendingDeliveryReport.id)) is None  # all applied
    await lab.assert_holds()


@pytest.mark.webhooks_to_api
async def test_without_forward_only_early_reports_are_dropped(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.DELIVERY_REPORTS_FORWARD_ONLY)
    campaign_id = await early_reports(unsafe, unsafe)
    assert await unsafe.recipient_statuses(campaign_id) == {"sent": 20}
    verdict = await unsafe.verdict()
    assert verdict["I7"].valid is False
    assert verdict["I7"].counts["regressed_or_missing_final"] == 20


async def test_a_report_for_a_reference_never_sent_is_recorded_and_flagged(lab: Lab) -> None:
    assert await lab.deliver_report("m-unknown", "someone-elses-ref", "Delivered") == "unmatched"
    assert await lab.deliver_report("m-unknown-2", "c999-r999", "Delivered") == "unmatched"
    async with lab.sessions() as session, session.begin():
        flagged = list(
            await session.scalars(select(WebhookEvent.flagged).where(WebhookEvent.provider == "mitto"))
        )
    assert flagged == [True, True]


async def test_concurrent_duplicate_reports_apply_once(lab: Lab) -> None:
    _, campaign_id = await lab.sending_campaign(recipients=1)
    await lab.send(campaign_id)
    [message] = lab.accepted_messages()
    outcomes = await asyncio.gather(
        *(lab.deliver_report(message["message_id"], message["reference"], "Delivered") for _ in range(4))
    )
    assert sorted(outcomes) == ["applied", "duplicate", "duplicate", "duplicate"]


async def test_the_callback_token_and_the_report_shape_are_checked(api: Api) -> None:
    client = api.anonymous()
    body = {
        "messageId": "m1",
        "reference": "c1-r1",
        "status": "Delivered",
        "errorCode": None,
        "timestamp": "t",
    }
    assert (await client.post("/webhooks/mitto/dlr", json=body)).status_code == 401
    assert (await client.post("/webhooks/mitto/dlr?token=wrong", json=body)).status_code == 401
    token = api.settings.mitto_dlr_token
    bad = await client.post(f"/webhooks/mitto/dlr?token={token}", json={**body, "status": "Teleported"})
    assert bad.status_code == 422
    assert problem(bad)["errors"][0]["field"] == "status"
    # Not JSON at all is malformed (400), as for every route; JSON of the wrong shape is 422.
    assert (await client.post(f"/webhooks/mitto/dlr?token={token}", content=b"{nope")).status_code == 400
    ok = await client.post(f"/webhooks/mitto/dlr?token={token}", json=body)
    assert ok.json() == {"status": "unmatched", "flagged": True}
    api.process.stop()
    assert token not in api.process.log_path.read_text()  # the secret in the URL never reaches a log


async def test_a_batch_records_and_applies_each_report_once(lab: Lab) -> None:
    """The API's group commit, driven directly: duplicates, reordering, early and unknown reports."""
    from service.db.apply_once import IncomingEvent
    from service.sending.delivery_reports import DeliveryReport
    from service.webhooks.report_batcher import apply_batch

    _, campaign_id = await lab.sending_campaign(recipients=4)
    with failpoints.armed("send.after_provider_accepted", "raise", count=1), pytest.raises(SimulatedCrash):
        await lab.send(campaign_id)  # accepted, nothing recorded: reports for these are early
    early = lab.accepted_messages()[3]
    await lab.expire_leases(campaign_id)
    async with lab.sessions() as session, session.begin():
        # Record three of the four; the fourth stays "sending" (its report will be early).
        from sqlalchemy import update

        for message in lab.accepted_messages()[:3]:
            rid = int(message["reference"].split("-r")[1])
            await session.execute(
                update(CampaignRecipient)
                .where(CampaignRecipient.id == rid)
                .values(status="sent", provider_message_id=message["message_id"])
            )
    m = lab.accepted_messages()

    def item(index: int, status: str, stamp: str = "t") -> tuple[DeliveryReport, IncomingEvent]:
        message = m[index]
        report = DeliveryReport(message["message_id"], message["reference"], status, None, None)
        event = IncomingEvent("mitto", f"{message['message_id']}:{status}:{stamp}", f"dlr.{status}")
        return report, event

    unknown = (DeliveryReport("m-x", "c9-r9", "Delivered", None, None), IncomingEvent("mitto", "m-x", "dlr"))
    batch = [
        item(0, "Delivered"),
        item(0, "Delivered"),
        item(1, "Sent"),
        item(1, "Delivered"),
        item(3, "Delivered"),
        unknown,
    ]
    async with lab.sessions() as session:
        outcomes = [o.outcome for o in await apply_batch(session, lab.settings, batch)]
    assert outcomes == [
        "applied",
        "duplicate",
        "superseded",
        "applied",
        "deferred_until_recorded",
        "unmatched",
    ]
    async with lab.sessions() as session:
        again = [
            o.outcome
            for o in await apply_batch(session, lab.settings, [item(0, "Delivered"), item(2, "Sent")])
        ]
    assert again == ["duplicate", "applied"]
    states = await recipients_by_message(lab)
    assert states[m[0]["message_id"]] == ("delivered", "Delivered")
    assert states[m[1]["message_id"]] == ("delivered", "Delivered")
    assert states[m[2]["message_id"]] == ("sent", "Sent")
    async with lab.sessions() as session, session.begin():
        kept = list(await session.scalars(select(PendingDeliveryReport.provider_message_id)))
    assert kept == [early["message_id"]]


async def test_a_report_racing_the_workers_record_is_applied_not_lost(lab: Lab) -> None:
    """The worker's record and a final report in two open transactions: neither may decide alone.

    Under READ COMMITTED the report's transaction did not see the uncommitted message id, kept the report
    as early, and the worker's `apply_pending` did not see the uncommitted kept report: 33 messages stayed
    `sent` after their `Delivered` was acknowledged (the lab's I7, PostgreSQL with its connections cut).
    """
    from sqlalchemy import update

    from service.db.apply_once import IncomingEvent
    from service.sending.delivery_reports import DeliveryReport, apply_pending
    from service.webhooks.report_batcher import apply_batch

    _, campaign_id = await lab.sending_campaign(recipients=1)
    with failpoints.armed("send.after_provider_accepted", "raise", count=1), pytest.raises(SimulatedCrash):
        await lab.send(campaign_id)
    [message] = lab.accepted_messages()
    recipient_id = int(message["reference"].split("-r")[1])
    report = DeliveryReport(message["message_id"], message["reference"], "Delivered", None, None)
    event = IncomingEvent("mitto", f"{message['message_id']}:Delivered:t", "dlr.Delivered")
    async with lab.sessions() as record:
        await record.begin()
        await record.execute(  # the worker's record, in flight
            update(CampaignRecipient)
            .where(CampaignRecipient.id == recipient_id)
            .values(status="sent", provider_message_id=message["message_id"])
        )

        async def webhook() -> str:
            async with lab.sessions() as session:
                [outcome] = await apply_batch(session, lab.settings, [(report, event)])
                return outcome.outcome

        racing = asyncio.create_task(webhook())
        await asyncio.sleep(0.5)
        assert not racing.done()  # it waits for the row the record holds
        await apply_pending(record, lab.settings, campaign_id)
        await record.commit()
    assert await racing == "applied"
    assert (await recipients_by_message(lab))[message["message_id"]] == ("delivered", "Delivered")
    async with lab.sessions() as session, session.begin():
        assert list(await session.scalars(select(PendingDeliveryReport.id))) == []
