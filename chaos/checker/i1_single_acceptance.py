"""I1: at most one provider acceptance per campaign recipient (no double sends).

Ground truth: the fake Mitto's ledger. Acceptances are grouped by client reference (one per recipient)
and, independently of references, by (campaign, phone), so a double send is caught even if a defect
made up a second reference. Safeguards: claim before send (3), resolve ambiguous sends (4).
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from chaos.checker.evidence import Acceptance, AcceptedLike, DatabaseSnapshot
from chaos.checker.result import CheckResult

ID = "I1"
TITLE = "at most one provider acceptance per campaign recipient"


_REFERENCE = operator.attrgetter("reference")
_CAMPAIGN = operator.attrgetter("campaign_id")
_TO = operator.attrgetter("to")
_RECIPIENT = operator.attrgetter("recipient_id")


def _triples(acceptances: Sequence[AcceptedLike]) -> set[tuple[int | None, str, str]]:
    return {(a.campaign_id, a.to, a.reference) for a in acceptances}


def check(
    acceptances: Sequence[AcceptedLike],
    snapshot: DatabaseSnapshot,
    whole: Callable[[set[str]], dict[str, list[Acceptance]]] | None = None,
) -> CheckResult:
    """`whole`: the full acceptances of some references (message ids, times), for the witnesses, when
    `acceptances` are `AcceptedSend`s that leave them out."""
    result = CheckResult(ID, TITLE, True)
    references = list(map(_REFERENCE, acceptances))
    distinct = set(references)
    # Counted only when some reference is doubled (a set is built in C at a fraction of a Counter's cost).
    doubled = (
        set()
        if len(distinct) == len(references)
        else {reference for reference, n in Counter(references).items() if n > 1}
    )
    recipients = snapshot.recipients
    # Whole-list passes (maps of attribute getters, set and Counter builds run in C per element); the
    # per-item Python work happens only for the few acceptances a violation involves.
    # Hashes of the (campaign, phone) pairs: zip reuses its one tuple when `hash` lets go of it, so no
    # million tuples are built; two pairs with one hash only send the check down the exact path below.
    phones = set(map(hash, zip(map(_CAMPAIGN, acceptances), map(_TO, acceptances), strict=True)))
    # Some phone of a campaign went out under two references? With no reference doubled, every
    # acceptance has a reference of its own, so that is exactly "fewer phones than acceptances"; only
    # otherwise are the (campaign, phone, reference) triples built to tell.
    phone_references = _triples(acceptances) if doubled else None
    other_references: dict[tuple[int | None, str], set[str]] = defaultdict(set)
    if len(phones) != (len(acceptances) if phone_references is None else len(phone_references)):
        by_phone: dict[tuple[int | None, str], set[str]] = defaultdict(set)
        for campaign_id, phone, reference in phone_references or _triples(acceptances):
            by_phone[(campaign_id, phone)].add(reference)
        other_references.update((key, refs) for key, refs in by_phone.items() if len(refs) > 1)
    unexpected = len(acceptances) - sum(map(recipients.__contains__, map(_RECIPIENT, acceptances)))
    groups: dict[str, list[Acceptance]] = defaultdict(list)
    if doubled and whole is not None:
        groups.update(whole(doubled))
    elif doubled:
        for acceptance in acceptances:
            if acceptance.reference in doubled:
                assert isinstance(acceptance, Acceptance), "AcceptedSends need `whole` for their witnesses"
                groups[acceptance.reference].append(acceptance)
    extra = 0
    for reference, group in groups.items():
        extra += len(group) - 1
        recipient = recipients.get(group[0].recipient_id or -1) or {}
        result.witness(
            {
                "reference": reference,
                "campaign_id": group[0].campaign_id,
                "recipient_id": group[0].recipient_id,
                "acceptances": len(group),
                "message_ids": [a.message_id for a in group],
                "accepted_at": [round(a.at, 3) for a in group],
                "recipient_status": recipient.get("status"),
                "attempts": recipient.get("attempts"),
            }
        )
    for (campaign_id, _phone), refs in other_references.items():
        result.witness({"campaign_id": campaign_id, "references_for_one_phone": sorted(refs)})
    result.counts = {
        "acceptances": len(acceptances),
        "recipients_accepted": len(distinct),
        "recipients_accepted_more_than_once": len(doubled),
        "extra_acceptances": extra,
        "phones_sent_twice_under_other_references": len(other_references),
        "acceptances_for_unknown_recipients": unexpected,
    }
    result.valid = not doubled and not other_references
    return result
