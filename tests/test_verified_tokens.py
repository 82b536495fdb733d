"""Session tokens verified once per process (service/auth.py VerifiedTokens): the same answers as a full
verification every time, at any moment of a token's life."""

from __future__ import annotations

import time
from datetime import datetime, tzinfo
from typing import Any

import jwt
import pytest

from service.auth import CLOCK_SKEW_SECONDS, VerifiedTokens, issue_session_token, shop_from_authorization
from service.errors import Unauthorized
from service.settings import Settings

SHOP = "alpha.myshopify.com"


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full verification (PyJWT decode) the module makes, by token."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)  # the module service.auth calls
    return seen


def _at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    """Both clocks a verification reads, ours and PyJWT's, at `moment`."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Frozen:
            return cls.fromtimestamp(moment, tz)

    monkeypatch.setattr(time, "time", lambda: moment)
    monkeypatch.setattr(jwt.api_jwt, "datetime", Frozen)


def test_a_token_is_verified_once_and_answers_the_same_shop(settings: Settings, decodes: list[str]) -> None:
    tokens = VerifiedTokens()
    header = f"Bearer {issue_session_token(settings, SHOP)}"
    assert [tokens.domain(settings, header) for _ in range(5)] == [SHOP] * 5
    assert len(decodes) == 1


def test_a_kept_token_is_refused_once_it_expires_as_a_fresh_check_refuses_it(
    settings: Settings, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = VerifiedTokens()
    header = f"Bearer {issue_session_token(settings, SHOP, ttl_seconds=60)}"
    assert tokens.domain(settings, header) == SHOP
    expired = time.time() + 60 + CLOCK_SKEW_SECONDS + 1
    _at(monkeypatch, expired)
    with pytest.raises(Unauthorized, match="expired") as kept:
        tokens.domain(settings, header)
    with pytest.raises(Unauthorized, match="expired") as fresh:
        shop_from_authorization(settings, header)
    assert str(kept.value) == str(fresh.value)
    with pytest.raises(Unauthorized, match="expired"):  # and stays refused: it was dropped, not kept
        tokens.domain(settings, header)


def test_a_refused_token_is_never_kept(settings: Settings, decodes: list[str]) -> None:
    tokens = VerifiedTokens()
    forged = jwt.encode({"dest": f"https://{SHOP}"}, "x" * 40, algorithm="HS256")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            tokens.domain(settings, f"Bearer {forged}")
    assert len(decodes) == 3
    for header in (None, "", "Basic abc"):
        with pytest.raises(Unauthorized):
            tokens.domain(settings, header)


def test_the_oldest_token_makes_room_at_capacity(settings: Settings, decodes: list[str]) -> None:
    tokens = VerifiedTokens(capacity=2)
    first, second, third = (f"Bearer {issue_session_token(settings, SHOP)}" for _ in range(3))
    for header in (first, second, third):
        tokens.domain(settings, header)
    tokens.domain(settings, third)
    tokens.domain(settings, second)
    assert len(decodes) == 3
    tokens.domain(settings, first)  # dropped: verified again
    assert len(decodes) == 4
