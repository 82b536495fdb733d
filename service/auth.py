"""Shopify-style session tokens: how a merchant's browser proves which shop it acts for.

A session token is an HS256 JWT signed with the app's client secret; `dest` is `https://{shop}`, `aud` the
app's API key, `iss` the shop's admin URL. The shop a request may touch is derived from the token alone,
never from a parameter the client chooses: that is what keeps tenants apart.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt
import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from sqlalchemy.ext.asyncio import AsyncEngine

from service import safeguards
from service.errors import Unauthorized
from service.metrics import RATE_LIMITED
from service.rate_limits import RateLimiter, rate_class_of
from service.settings import Settings
from service.shops import SessionShop, shop_for_request

SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,60}\.myshopify\.com$")
CLOCK_SKEW_SECONDS = 10


def is_shop_domain(value: str) -> bool:
    return bool(SHOP_DOMAIN.match(value))


def issue_session_token(settings: Settings, shop_domain: str, ttl_seconds: int = 60) -> str:
    """What Shopify's App Bridge would hand the merchant's browser (the lab and tests act as it): a token
    that lives a minute, as Shopify's do; clients fetch a fresh one rather than keep one."""
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


class SessionTokens(Mapping[str, str]):
    """Fresh session tokens for the shops a client acts for, as App Bridge hands them out: each lives
    `ttl_seconds` and is replaced halfway through its life. `tokens[domain]` is a valid one, always."""

    def __init__(self, settings: Settings, ttl_seconds: int = 60) -> None:
        self.settings = settings
        self.ttl_seconds = ttl_seconds
        self._issued: dict[str, tuple[float, str]] = {}

    def __getitem__(self, domain: str) -> str:
        now = time.monotonic()
        issued = self._issued.get(domain)
        if issued is None or now - issued[0] > self.ttl_seconds / 2:
            issued = (now, issue_session_token(self.settings, domain, self.ttl_seconds))
            self._issued[domain] = issued
        return issued[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._issued)

    def __len__(self) -> int:
        return len(self._issued)


def shop_from_authorization(settings: Settings, authorization: str | None) -> str:
    """The shop domain a valid `Authorization: Bearer` header speaks for, or Unauthorized.

    Besides signature, audience, expiry and a consistent shop, a token must be short-lived: Shopify's
    last a minute, and a long-lived one (minted by whoever held the secret once) is refused, however
    valid its signature. The 401's text says what was wrong in words, never a library's class names."""
    return _verified(settings, authorization)[0]


def _verified(settings: Settings, authorization: str | None) -> tuple[str, float, float]:
    """`shop_from_authorization`'s check, with the token's `nbf` and `exp` (for `VerifiedTokens`)."""
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
    except jwt.ImmatureSignatureError:
        raise Unauthorized("session token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("session token is for another app") from None
    except jwt.MissingRequiredClaimError:
        raise Unauthorized("session token lacks a required claim (exp, nbf, dest, aud, iss)") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("session token is not a valid token signed for this app") from None
    exp, nbf = claims["exp"], claims["nbf"]
    if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
        raise Unauthorized("session token's exp and nbf must be numbers")
    longest = settings.session_token_max_lifetime_seconds
    if exp - nbf > longest + CLOCK_SKEW_SECONDS or exp > time.time() + longest + CLOCK_SKEW_SECONDS:
        raise Unauthorized(f"session token lives longer than {longest:g} s; use a fresh, short-lived token")
    dest_host = urlsplit(str(claims["dest"])).hostname or ""
    iss_host = urlsplit(str(claims["iss"])).hostname or ""
    if not is_shop_domain(dest_host) or iss_host != dest_host:
        raise Unauthorized("session token does not name a shop consistently (dest/iss)")
    return dest_host, float(nbf), float(exp)


class VerifiedTokens:
    """Session tokens this process has verified, by their exact text, until they expire.

    A merchant's browser sends the same token with every request until App Bridge hands it a fresh one
    (a minute), so most requests would verify a token already verified: PyJWT's decode is about 90
    microseconds of the API's CPU, a tenth of a whole wallet read. A token found here was verified in
    full before (signature, audience, claims, lifetime); only the clock can change its answer, so its
    `nbf` and `exp` are checked again on every use, and one that expired is verified afresh (and refused
    with the usual words). Only accepted tokens are kept, at most `capacity`, the oldest dropped first:
    nobody without the app's secret can fill it."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._domains: dict[str, tuple[str, float, float]] = {}  # token -> (domain, nbf, exp)

    def domain(self, settings: Settings, authorization: str | None) -> str:
        known = self._domains.get(authorization) if authorization else None
        if known is not None:
            domain, nbf, exp = known
            if nbf - CLOCK_SKEW_SECONDS <= time.time() < exp + CLOCK_SKEW_SECONDS:
                return domain
            del self._domains[authorization]  # type: ignore[arg-type]
        domain, nbf, exp = _verified(settings, authorization)
        if len(self._domains) >= self.capacity:
            del self._domains[next(iter(self._domains))]
        self._domains[authorization] = (domain, nbf, exp)  # type: ignore[index]
        return domain


# Routes anyone may call: health and metrics (for load balancers and Prometheus), the OpenAPI, and the
# providers' webhooks (each verified by its own signature or token). Every other route is a merchant's
# and needs a session token: a new route is private unless it is added here.
PUBLIC_PATHS = ("/health", "/metrics", "/schema", "/webhooks")


def is_public(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PUBLIC_PATHS)


def session_guard(
    settings: Settings, engine: AsyncEngine, limiter: RateLimiter | None = None
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """The app-wide guard: a private route's request is authenticated (token, then an installed shop)
    and counted against its shop's budget for the route's class (safeguard 9), before its body is read
    or decoded: an anonymous caller cannot make the service parse anything, and a refused request
    changes nothing. The providers' webhooks are counted only against their own flood guard."""
    limited = limiter is not None and safeguards.is_on(settings, safeguards.TENANT_RATE_LIMITS)
    tokens = VerifiedTokens()

    async def require_session(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        path = connection.scope["path"]
        if is_public(path):
            if limited and path.startswith("/webhooks/"):
                assert limiter is not None
                provider = path.split("/")[2]
                decision = await limiter.for_webhooks(provider)
                if decision is not None and not decision.allowed:
                    RATE_LIMITED.labels(route_class="webhooks").inc()
                limiter.refuse(decision, f"{provider} webhooks")
            return
        domain = tokens.domain(settings, connection.headers.get("authorization"))
        structlog.contextvars.bind_contextvars(shop_domain=domain)  # on every line, a refusal's too
        route_class = rate_class_of(handler)
        if limited and route_class is not None:
            # Counted by the token's verified shop domain, before the database is asked anything: a
            # refused request costs a signature check and one Redis call, so a flood of them is cheap.
            assert limiter is not None
            decision = await limiter.for_shop(domain, route_class)
            if decision is not None:
                connection.state.rate_limit = decision  # its headers go on the answer, refused or not
                if not decision.allowed:
                    RATE_LIMITED.labels(route_class=route_class).inc()
            limiter.refuse(decision, f"{route_class} requests of this shop")
        shop = await shop_for_request(engine, domain)
        connection.state.shop = shop
        structlog.contextvars.bind_contextvars(shop_id=shop.id)

    return require_session


def provide_shop(request: Request[Any, Any, Any]) -> SessionShop:
    """The `shop` dependency of every merchant route: the shop the guard authenticated."""
    shop: SessionShop = request.state.shop
    return shop
