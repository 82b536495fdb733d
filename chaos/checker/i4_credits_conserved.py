"""I4: credits are conserved: balance = sum of ledger entries, never negative; reservations add up.

Checks, per shop: wallet balance equals the sum of its ledger entries; balance and available credits
are not negative; `reserved` equals the remaining credits of its active reservations; and no finished
(completed, cancelled, failed) campaign with nothing in flight still holds a live reservation.
Safeguards: the enqueue transaction (2) and the reconciler (8).
"""

from __future__ import annotations

from collections import defaultdict

from chaos.checker.evidence import DatabaseSnapshot, column, columns
from chaos.checker.result import CheckResult
from service.db.models import CampaignStatus, RecipientStatus, ReservationStatus

ID = "I4"
TITLE = "balance = sum of ledger entries, never negative; no live reservation on a finished campaign"
FINISHED = {CampaignStatus.COMPLETED.value, CampaignStatus.CANCELLED.value, CampaignStatus.FAILED.value}


def check(snapshot: DatabaseSnapshot) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    ledger_sum: dict[int, int] = defaultdict(int)
    for entry in snapshot.ledger:
        ledger_sum[entry["shop_id"]] += entry["amount"]
    active_remaining: dict[int, int] = defaultdict(int)
    live_on_finished = []
    recipient_rows = snapshot.recipients.values()
    sending = RecipientStatus.SENDING.value
    in_flight = {
        campaign_id
        for campaign_id, status in columns(recipient_rows, "campaign_id", "status")
        if status == sending
    }
    sending_without_reservation = []
    reserved_campaigns = {r["campaign_id"] for r in snapshot.reservations}
    for reservation in snapshot.reservations:
        if reservation["status"] != ReservationStatus.ACTIVE.value:
            continue
        active_remaining[reservation["shop_id"]] += reservation["remaining"]
        campaign = snapshot.campaigns.get(reservation["campaign_id"])
        if campaign and campaign["status"] in FINISHED and campaign["id"] not in in_flight:
            live_on_finished.append(reservation)
    campaigns_with_recipients = set(column(recipient_rows, "campaign_id"))
    for campaign in snapshot.campaigns.values():
        enqueued = campaign["status"] != CampaignStatus.DRAFT.value
        has_recipients = campaign["recipient_count"] or campaign["id"] in campaigns_with_recipients
        if enqueued and has_recipients and campaign["id"] not in reserved_campaigns:
            sending_without_reservation.append(campaign)
    mismatched = negative = reserved_wrong = 0
    for shop_id in sorted(set(snapshot.wallets) | set(ledger_sum)):
        wallet = snapshot.wallets.get(shop_id, {"balance": 0, "reserved": 0})
        if wallet["balance"] != ledger_sum.get(shop_id, 0):
            mismatched += 1
            result.witness(
                {
                    "shop_id": shop_id,
                    "wallet_balance": wallet["balance"],
                    "ledger_sum": ledger_sum.get(shop_id, 0),
                }
            )
        if wallet["balance"] < 0 or wallet["balance"] - wallet["reserved"] < 0:
            negative += 1
            result.witness(
                {
                    "shop_id": shop_id,
                    "negative": True,
                    "balance": wallet["balance"],
                    "reserved": wallet["reserved"],
                }
            )
        if wallet["reserved"] != active_remaining.get(shop_id, 0):
            reserved_wrong += 1
            result.witness(
                {
                    "shop_id": shop_id,
                    "wallet_reserved": wallet["reserved"],
                    "active_reservations_remaining": active_remaining.get(shop_id, 0),
                }
            )
    for reservation in live_on_finished:
        result.witness({"live_reservation_on_finished_campaign": reservation})
    for campaign in sending_without_reservation:
        result.witness(
            {
                "enqueued_campaign_without_reservation": campaign["id"],
                "status": campaign["status"],
                "why": "moved to sending, yet no reservation was ever written: an enqueue stopped half-way "
                "and what it had done stayed (see its answers)",
            }
        )
    result.counts = {
        "shops": len(snapshot.wallets),
        "balance_not_ledger_sum": mismatched,
        "negative_balances": negative,
        "reserved_not_matching_reservations": reserved_wrong,
        "live_reservations_on_finished_campaigns": len(live_on_finished),
        "enqueued_campaigns_without_reservation": len(sending_without_reservation),
    }
    result.valid = not (
        mismatched or negative or reserved_wrong or live_on_finished or sending_without_reservation
    )
    return result
