"""The client reference Mitto keeps for each message: the key for resolving a send whose answer was lost.

It is derived from the recipient row and never changes across attempts, so "did the provider ever accept
this recipient?" is one lookup, whichever attempt sent it.
"""

from __future__ import annotations

import re

_REFERENCE = re.compile(r"^c(\d+)-r(\d+)$")


def reference_for(campaign_id: int, recipient_id: int) -> str:
    return f"c{campaign_id}-r{recipient_id}"


def parse_reference(reference: str) -> tuple[int, int] | None:
    """(campaign id, recipient id), or None for a reference this service never made."""
    match = _REFERENCE.match(reference)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))
