"""An uninstall racing the work it must stop: nothing is sent for the shop once the uninstall commits.

Before the fix, an uninstall that committed while an enqueue was still in its transaction saw no
`sending` campaign to cancel (the enqueue had not committed yet), and the enqueue then committed a
campaign that sent for a shop that had left. Both now hold the shop's row (`shops.holds_installed_shop`):
whichever commits second sees the first.
"""

from __future__ import annotations

import asyncio

import pytest

from service import failpoints
from service.errors import Unauthorized
from service.shops import ShopNotInstalled, reinstall_shop, shop_for_request
from tests.support.lab import Lab
from tests.test_webhooks_shopify import UNINSTALLED

SHOP = "alpha.myshopify.com"


async def _uninstall(lab: Lab, event: str = "evt-u") -> str:
    return await lab.deliver_shopify("app/uninstalled", UNINSTALLED, event)


async def test_an_uninstall_during_an_enqueue_stops_the_campaign_it_commits(lab: Lab) -> None:
    shop_id = await lab.shop(SHOP, credits=100)
    await lab.contacts(shop_id, 10)
    campaign_id = await lab.campaign(shop_id)
    with failpoints.paused("enqueue.after_status_change") as pause:
        enqueue = asyncio.create_task(lab.enqueue(shop_id, campaign_id, key="k1"))
        await pause.reached.wait()  # the enqueue holds its transaction open, campaign already `sending`
        uninstall = asyncio.create_task(_uninstall(lab))
        # The uninstall must wait for the enqueue (the shop's row); had it gone ahead, it would have seen
        # no sending campaign and the enqueue would commit one afterwards (the bug).
        done, _ = await asyncio.wait({uninstall}, timeout=1.0)
        assert not done, "the uninstall did not wait for the enqueue in flight"
        pause.go.set()
        outcome = await enqueue
        uninstalled = await uninstall
    assert outcome.status == 202
    assert uninstalled == "uninstalled:1"  # it waited for the enqueue, and then stopped its campaign
    campaign = await lab.campaign_row(campaign_id)
    assert (campaign.status, campaign.status_reason) == ("cancelled", "app_uninstalled")
    await lab.send_all(campaign_id)
    assert lab.accepted_messages() == []
    assert await lab.wallet(shop_id) == (100, 0)
    await lab.assert_holds("I2", "I4")


async def test_an_enqueue_after_the_uninstall_committed_is_refused(lab: Lab) -> None:
    shop_id = await lab.shop(SHOP, credits=100)
    await lab.contacts(shop_id, 10)
    campaign_id = await lab.campaign(shop_id)
    await _uninstall(lab)
    with pytest.raises(ShopNotInstalled):
        await lab.enqueue(shop_id, campaign_id, key="k1")
    assert (await lab.campaign_row(campaign_id)).status == "draft"
    assert await lab.wallet(shop_id) == (100, 0)


async def test_a_batch_claimed_just_before_the_uninstall_sends_nothing(lab: Lab) -> None:
    shop_id, campaign_id = await lab.sending_campaign(recipients=20, credits=100, domain=SHOP)
    with failpoints.paused("send.after_claim") as pause:
        send = asyncio.create_task(lab.send(campaign_id))
        await pause.reached.wait()  # claimed and committed; the provider not called yet
        assert await _uninstall(lab) == "uninstalled:1"
        pause.go.set()
        report = await send
    assert report.provider_calls == 0
    assert lab.accepted_messages() == []
    assert await lab.recipient_statuses(campaign_id) == {"cancelled": 20}
    assert await lab.wallet(shop_id) == (100, 0)
    await lab.assert_holds("I1", "I2", "I3", "I4")


async def test_a_reinstalled_shop_works_again_and_only_through_the_install_step(lab: Lab) -> None:
    shop_id = await lab.shop(SHOP, credits=100)
    await lab.contacts(shop_id, 5)
    await _uninstall(lab)
    async with lab.sessions() as session:
        with pytest.raises(Unauthorized):
            await shop_for_request(lab.engine, SHOP)  # a valid token is not an install
        assert await reinstall_shop(session, SHOP) is True
        assert (await shop_for_request(lab.engine, SHOP)).id == shop_id
        assert await reinstall_shop(session, SHOP) is False  # installed already
    campaign_id = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, campaign_id)
    await lab.send_all(campaign_id)
    assert len(lab.accepted_messages()) == 5
