"""Resolve ambiguous sends by reference (safeguard 4, invariant I1).

When the provider may have accepted a message but we never saw its answer (a timeout, a reset, a 5xx,
a worker killed mid-call), the only safe next step is to ask the provider about the message's reference:
found -> it was accepted, record it (and debit); not found -> it never was, a resend is safe; the lookup
itself failed -> still unknown, ask again later. Both the batch job (right after an ambiguous error) and
the reconciler (for claims whose lease expired) go through here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.sending.mitto import MittoClient, MittoError

LOOKUP_CONCURRENCY = 16


@dataclass
class Resolution:
    found: dict[int, str] = field(default_factory=dict)  # recipient id -> provider message id
    missing: set[int] = field(default_factory=set)  # provider never accepted these
    failed: set[int] = field(default_factory=set)  # lookup failed: still unknown


async def resolve_references(mitto: MittoClient, references: dict[str, int]) -> Resolution:
    """Look up every reference (reference -> recipient id) with bounded concurrency."""
    resolution = Resolution()
    semaphore = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(reference: str, recipient_id: int) -> None:
        async with semaphore:
            try:
                found = await mitto.lookup(reference)
            except MittoError:
                resolution.failed.add(recipient_id)
                return
        if found:
            # More than one acceptance would be a double send; we record the first, the checker counts all.
            resolution.found[recipient_id] = found[0].message_id
        else:
            resolution.missing.add(recipient_id)

    await asyncio.gather(*(one(ref, rid) for ref, rid in references.items()))
    return resolution
