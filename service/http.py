"""HTTP plumbing shared by every controller: problem details, their OpenAPI shape, and request ids.

No error leaves as a bare 500 with a traceback: domain errors carry their own status; a unique-constraint
race becomes a 409; a database or queue outage a 503 with Retry-After (the client retries, with its
Idempotency-Key where it has one); anything else a 500 problem whose detail names only the request id.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, ExceptionHandlersMap, Message, Receive, Scope, Send
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service import logs
from service.errors import PROBLEM_TYPE_BASE, ProblemError
from service.metrics import HTTP_LATENCY, HTTP_REQUESTS

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()  # ASGI header names are lower-case bytes

log = logs.get_logger("service.http")


class FieldError(msgspec.Struct, omit_defaults=True):
    """One thing wrong with the input: which field (and row, for bulk input), and what."""

    message: str
    field: str | None = None
    row: int | None = None


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details: every error this API answers has this shape (`application/problem+json`).

    `type` is a stable URI whose last segment clients branch on; `request_id` is the id to quote to an
    operator; `errors` lists each bad field. Some problems carry a few more members (`needed` and
    `available` credits on a 402, `campaign_id` on a reused key, `billing_id` on a checkout refusal).
    """

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: list[FieldError] | None = None
    errors_not_listed: int | None = None


_DESCRIPTIONS = {
    400: "The request is malformed: a parameter, a header or the body cannot be read",
    401: "Missing or invalid credentials (session token, signature or token)",
    413: "The request body is larger than this route accepts",
    429: "Over this shop's budget for the route's class: retry after `Retry-After` seconds",
    402: "Not enough credits; nothing was changed",
    404: "No such resource for this shop",
    409: "Conflicts with the resource's state or with a request still in flight; see `type`",
    422: "The request was understood but its content is invalid; `errors` names each field",
    503: (
        "A dependency (database, queue or payment provider) is unavailable, or this API process is over"
        " capacity (`overloaded`: nothing was done); retry after `Retry-After`"
    ),
}


_SCHEMA_KEYS = {
    "anyOf": "any_of",
    "oneOf": "one_of",
    "additionalProperties": "additional_properties",
    "maxLength": "max_length",
    "minLength": "min_length",
    "maxItems": "max_items",
    "minItems": "min_items",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
}
_NESTED = {"properties", "items", "any_of", "one_of", "additional_properties"}


def _schema(document: Any, definitions: dict[str, Any]) -> Any:
    """A JSON Schema (as msgspec writes it) as Litestar's `Schema`, `$ref`s inlined."""
    if isinstance(document, bool):
        return document
    if "$ref" in document:
        return _schema(definitions[document["$ref"].rsplit("/", 1)[-1]], definitions)
    fields: dict[str, Any] = {}
    for key, value in document.items():
        name = _SCHEMA_KEYS.get(key, key)
        if name == "type":
            value = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        elif name == "properties":
            value = {k: _schema(v, definitions) for k, v in value.items()}
        elif name in ("any_of", "one_of"):
            value = [_schema(v, definitions) for v in value]
        elif name in _NESTED:
            value = _schema(value, definitions)
        elif name == "$defs":
            continue
        fields[name] = value
    return Schema(**fields)


def documented_body(model: type, description: str) -> type[Operation]:
    """An `operation_class` that documents the request body as `model`'s JSON schema.

    Handlers that take hostile bodies read and decode them themselves (`input_rules.decode_json`, then
    the domain's validation, which reports every bad field at once); this keeps the OpenAPI as precise
    as if Litestar had decoded the body into `model`, so a fuzzer generates and checks the right shapes."""
    definitions = msgspec.json.schema_components([model], ref_template="#/$defs/{name}")[1]
    body = RequestBody(
        required=True,
        description=description,
        content={
            "application/json": OpenAPIMediaType(schema=_schema(definitions[model.__name__], definitions))
        },
    )

    class WithDocumentedBody(Operation):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.request_body = body

    WithDocumentedBody.__name__ = f"{model.__name__}Operation"
    return WithDocumentedBody


def problems(*statuses: int, **descriptions: str) -> dict[int, ResponseSpec]:
    """The OpenAPI `responses` of a route's error statuses, each a problem-details body.

    `descriptions` overrides a status's text (keyword `s409="..."`)."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=descriptions.get(f"s{status}", _DESCRIPTIONS[status]),
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }


def problem_response(status: int, slug: str, title: str, detail: str, **extra: Any) -> Response[Any]:
    headers = extra.pop("headers", None) or {}
    body = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    request_id = logs.current_request_id()
    if request_id:
        body["request_id"] = request_id
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def handle_problem(_request: Request[Any, Any, Any], exc: ProblemError) -> Response[Any]:
    return problem_response(exc.status, exc.slug, exc.title, exc.detail, headers=exc.headers, **exc.extra)


def handle_http_exception(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    slug = {
        400: "bad-request",
        401: "unauthorized",
        404: "not-found",
        405: "method-not-allowed",
        413: "payload-too-large",
    }.get(status, "http-error")
    extra: dict[str, Any] = {}
    if isinstance(exc.extra, dict | list) and exc.extra:
        extra["errors"] = exc.extra
    return problem_response(
        status, slug, exc.detail or "Request error", exc.detail or "", headers=exc.headers, **extra
    )


def handle_integrity_error(_request: Request[Any, Any, Any], exc: IntegrityError) -> Response[Any]:
    log.warning("integrity_conflict", error=type(exc.orig).__name__ if exc.orig else "IntegrityError")
    return problem_response(
        409,
        "conflict",
        "Conflict",
        "the request raced with another change; retry it",
        headers={"Retry-After": "1"},
    )


def handle_database_unavailable(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database_unavailable", error=type(exc).__name__)
    return problem_response(
        503,
        "unavailable",
        "Service temporarily unavailable",
        "the database could not be reached; retry the request",
        headers={"Retry-After": "1"},
    )


def handle_unexpected(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return handle_database_unavailable(_request, exc)
    log.error("unhandled_error", exc_info=exc)
    return problem_response(
        500, "internal-error", "Internal error", "an unexpected error occurred; see the request id"
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ProblemError: handle_problem,
    HTTPException: handle_http_exception,
    IntegrityError: handle_integrity_error,
    OperationalError: handle_database_unavailable,
    InterfaceError: handle_database_unavailable,
    PoolTimeout: handle_database_unavailable,
    Exception: handle_unexpected,
}


class RequestContextMiddleware(ASGIMiddleware):
    """Binds a request id (the client's `X-Request-Id` if sane), logs one line per request, counts it
    (by route template, never the raw path), and puts the rate limit's fields on its answer."""

    scopes = ("http",)  # type: ignore[assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        given = next((value for name, value in scope["headers"] if name == _REQUEST_ID_KEY), None)
        request_id = logs.request_id_from(given.decode("latin-1") if given is not None else None)
        started = time.perf_counter()
        status_holder: dict[str, int] = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                decision = (scope.get("state") or {}).get("rate_limit")
                if decision is not None:
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    extra += [
                        (name.lower().encode(), value.encode())
                        for name, value in decision.headers().items()
                        if name.lower().encode() not in present
                    ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await next_app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = str(scope.get("path_template") or "unmatched")
                method = str(scope.get("method"))
                HTTP_REQUESTS.labels(
                    route=route, method=method, status=str(status_holder.get("status"))
                ).inc()
                HTTP_LATENCY.labels(route=route, method=method).observe(seconds)
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status_holder.get("status"),
                    duration_ms=round(seconds * 1000, 2),
                )


def allow_every_method_in_options(app: Litestar) -> None:
    """Make each path's automatic `OPTIONS` answer list every method the path has.

    Litestar 2.25 builds that answer when a path's first handler is registered and keeps it when more
    handlers join the path, so `OPTIONS /api/campaigns` said `Allow: OPTIONS, POST` though the path also
    answers GET (schemathesis' allow-header check found it). Each answer is rebuilt here from the
    finished route's own method set."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "OPTIONS" not in route.route_handler_map:
            continue
        handler, _ = route.route_handler_map["OPTIONS"]
        if handler.handler_name != "options_handler":
            continue  # a route's own OPTIONS handler, not Litestar's
        allow = ", ".join(sorted(route.methods))

        def options_handler(scope: Scope, allow: str = allow) -> Response[None]:
            return Response(content=None, status_code=204, headers={"Allow": allow}, media_type="text/plain")

        handler._fn = options_handler  # type: ignore[assignment]  # sync, as the one it replaces


def resolve_dependencies_one_by_one(app: Litestar) -> None:
    """Make every handler resolve its dependencies one after another instead of in a task group.

    Litestar resolves the dependencies of one level of its graph concurrently, in an anyio task group,
    whenever there are two or more (every route here has: a session, the shop, the settings...). None of
    ours waits on anything worth overlapping (the constants return at once, the session opens no
    connection until used), so the task group is pure cost: measured side by side on the delivery-report
    route (`bench/webhooks.py`), dropping it raised one API process from 785-853 to 1,110-1,389
    reports/s. Each level keeps its place in the graph's order; inside a level, dependencies that open
    something (generators: the session) come last, so a plain dependency that refuses the request (a bad
    page cursor) does so before any generator has started."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for _handler, kwargs_model in route.route_handler_map.values():
            kwargs_model.dependency_batches = [
                {dependency}
                for batch in kwargs_model.dependency_batches
                for dependency in sorted(
                    batch,
                    key=lambda d: (
                        d.provide.has_sync_generator_dependency or d.provide.has_async_generator_dependency,
                        d.key,
                    ),
                )
            ]
