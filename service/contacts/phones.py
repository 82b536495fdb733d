"""Phone numbers in, E.164 out: the one form the database, the provider and the checker compare."""

from __future__ import annotations

import phonenumbers


class InvalidPhone(ValueError):
    pass


def normalize_phone(raw: str, default_region: str) -> str:
    """`(202) 555-0143` with region US, or `+1 202 555 0143`, become `+12025550143`."""
    text = raw.strip()
    if not text or len(text) > 32:
        raise InvalidPhone("is empty or too long")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
