"""How many SMS segments a body costs: one credit per segment per recipient, as carriers bill.

GSM 03.38 text fits 160 characters in one segment and 153 per segment once split (the rest carries the
concatenation header); extension characters such as `{` or `€` take two. Anything outside the GSM
alphabet makes the whole message UCS-2: 70 characters alone, 67 per segment when split.
"""

from __future__ import annotations

GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = set("^{}\\[~]|€\f")


def count_segments(body: str) -> int:
    if not body:
        return 1
    if all(ch in GSM_BASIC or ch in GSM_EXTENSION for ch in body):
        units = sum(2 if ch in GSM_EXTENSION else 1 for ch in body)
        single, multi = 160, 153
    else:
        # UCS-2 counts UTF-16 code units: characters beyond the BMP (emoji) take two.
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    if units <= single:
        return 1
    return -(-units // multi)
