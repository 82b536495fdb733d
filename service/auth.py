"""Shopify-style session tokens: how a merchant's browser proves which shop it acts for.

A session token is an HS256 JWT signed with the app's client secret; `dest` is `https://{shop}`, `aud` the
app's API key, `iss` the shop's admin URL. The shop a request may touch is derived from the token alone,
never from a parameter the client chooses: that is what keeps tenants apart.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import jwt
import structlog
from litestar import Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Shop
from service.errors import Unauthorized
from service.settings import Settings
from service.shops import shop_for_request

SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,60}\.myshopify\.com$")
CLOCK_SKEW_SECONDS = 10


def is_shop_domain(value: str) -> bool:
    return bool(SHOP_DOMAIN.match(value))


def issue_session_token(settings: Settings, shop_domain: str, ttl_seconds: int = 3600) -> str:
    """What Shopify's App Bridge would hand the merchant's browser (the lab and tests act as it)."""
    if not is_shop_domain(shop_domain):
        raise ValueError(f"not a shop domain: {shop_domain!r} (expected NAME.myshopify.com)")
    now = int(time.time())
    claims = {
        "iss": f"https://{shop_domain}/admin",
        "dest": f"https://{shop_domain}",
        "aud": settings.shopify_api_key,
        "sub": "1",
        "exp": now + ttl_seconds,
        "nbf": now - 1,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.shopify_api_secret, algorithm="HS256")


def shop_from_authorization(settings: Settings, authorization: str | None) -> str:
    """The shop domain a valid `Authorization: Bearer` header speaks for, or Unauthorized."""
    if not authorization:
        raise Unauthorized("Authorization header is missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <session token>'")
    try:
        claims = jwt.decode(
            token.strip(),
            settings.shopify_api_secret,
            algorithms=["HS256"],
            audience=settings.shopify_api_key,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "nbf", "dest", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("session token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"session token is invalid: {type(exc).__name__}") from None
    dest_host = urlsplit(str(claims["dest"])).hostname or ""
    iss_host = urlsplit(str(claims["iss"])).hostname or ""
    if not is_shop_domain(dest_host) or iss_host != dest_host:
        raise Unauthorized("session token does not name a shop consistently (dest/iss)")
    return dest_host


async def provide_shop(request: Request[Any, Any, Any], settings: Settings, db_session: AsyncSession) -> Shop:
    """The `shop` dependency of every merchant route: the shop the request's session token speaks for."""
    domain = shop_from_authorization(settings, request.headers.get("authorization"))
    shop = await shop_for_request(db_session, domain)
    structlog.contextvars.bind_contextvars(shop_id=shop.id)
    return shop
