"""The happy path on both backends: enqueue -> claim -> send -> record + debit -> completed."""

from __future__ import annotations

from tests.support.lab import Lab


async def test_campaign_sends_each_recipient_once_and_debits_once(lab: Lab) -> None:
    shop_id, campaign_id = await lab.sending_campaign(recipients=120)
    await lab.send_all(campaign_id)
    campaign = await lab.campaign_row(campaign_id)
    assert campaign.status == "completed"
    assert campaign.batch_count == 3
    assert await lab.recipient_statuses(campaign_id) == {"sent": 120}
    balance, reserved = await lab.wallet(shop_id)
    assert (balance, reserved) == (240 - 120, 0)
    await lab.assert_holds()
