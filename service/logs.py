"""Structured logs that never carry personal data or secrets (safeguard 10, invariant I8).

Every log line, ours or a library's (uvicorn, SAQ, SQLAlchemy), passes through `redact` before it is
rendered: values under sensitive keys are dropped, and phone numbers, email addresses, bearer tokens,
JWTs, `token=` query parameters and the configured secrets are masked wherever they appear in text.
A request id is bound per request and travels into the jobs the request causes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from service.settings import Settings

REDACTED = "[redacted]"

SENSITIVE_KEYS = re.compile(
    r"(^|_)(phone|phones|phone_number|to|msisdn|mobile|tel|email|emails|email_address|token|secret|password|"
    r"authorization|cookie|api_key|apikey|signature|hmac|first_name|last_name|full_name|given_name|"
    r"family_name|display_name|address)($|_)",
    re.IGNORECASE,
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # firstName -> first_Name, phoneNumber -> phone_Number

# Anything the contacts validator accepts as an email (a local part, `@`, a domain with a dot), however
# unusual its characters; and every shape a phone number is typed in.
_EMAIL_TEXT = re.compile(r"[^\s@\"'<>()\[\],;:]+@[^\s@\"'<>()\[\],;:]+\.[^\s@\"'<>()\[\],;:]+")
_TEXT_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"), "Bearer " + REDACTED),
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), REDACTED),
    (re.compile(r"(?i)([?&;](?:token|api_key|key|secret|signature)=)[^&\s\"']+"), r"\1" + REDACTED),
    (re.compile(r"\b(?:whsec|sk_live|sk_test|rk_live|rk_test|shpss|shpat)_[\w]+"), REDACTED),
    (_EMAIL_TEXT, REDACTED),
    # tel: URIs, whatever follows
    (re.compile(r"(?i)\btel:[+\d().\s-]{5,}"), REDACTED),
    # E.164 and loosely formatted international numbers (+1 202-555-0143, +44 (0)7700 900123)
    (re.compile(r"\+\d[\d\s().-]{5,18}\d"), REDACTED),
    # national formats: (202) 555-0143, (202)555-0143, 202-555-0143, 202.555.0143, 202 555 0143
    (re.compile(r"\(\d{3}\)\s?\d{3}[-.\s]?\d{4}(?!\d)"), REDACTED),
    (re.compile(r"(?<![\w.:/-])\d{3}[-.\s]\d{3}[-.\s]\d{4}(?![\w-])"), REDACTED),
    # bare national numbers: a run of 9-15 digits standing alone
    (re.compile(r"(?<![\w.:-])\d{9,15}(?![\w.:-])"), REDACTED),
]

# What every pattern above needs at least one of: a digit (phones), `@` (emails), `=` (query secrets),
# `bearer`, `tel:`, `eyJ` or a provider key prefix. Text with none of them cannot match any pattern, and
# most of a log line's text (event names, paths, levels, loggers) has none, so it skips the ten passes:
# one search instead of ten substitutions (tests/test_units.py holds the two to the same answer).
_MIGHT_MATCH = re.compile(r"[\d@=]|(?i:bearer|tel:)|eyJ|whsec_|[sr]k_(?:live|test)_|shp(?:ss|at)_")

_known_secrets: list[str] = []


def register_secrets(values: Iterable[str]) -> None:
    """Secrets from settings are masked verbatim wherever they appear, whatever their shape."""
    for value in values:
        if value and len(value) >= 6 and value not in _known_secrets:
            _known_secrets.append(value)
    _known_secrets.sort(key=len, reverse=True)


def redact_text(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if not _MIGHT_MATCH.search(text):
        return text
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        masked = redact_text(value)
        if masked != value:
            _count_redaction("text")
        return masked
    if isinstance(value, dict):
        return {k: _masked_field() if _is_sensitive(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_redact_value(v) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


def _masked_field() -> str:
    _count_redaction("field")
    return REDACTED


def _is_sensitive(key: Any) -> bool:
    """`phone`, `customer_email`, `firstName`, `X-Shopify-Hmac-Sha256`... (camelCase and dashes too)."""
    return isinstance(key, str) and _is_sensitive_name(key)


@functools.lru_cache(maxsize=4096)
def _is_sensitive_name(key: str) -> bool:
    """Keys are few and repeat on every line: each is judged once (two regexes), then looked up."""
    return bool(SENSITIVE_KEYS.search(_CAMEL.sub("_", key).replace("-", "_")))


# Keys whose values are never personal data: written by the pipeline itself, or (`request_id`) made clean
# where they are bound (`request_id_from`), once per request instead of on every line.
_CLEAN_KEYS = frozenset({"timestamp", "level", "logger", "request_id"})


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the last step before rendering, so nothing escapes it."""
    for key in list(event_dict):
        if key in _CLEAN_KEYS:
            continue
        if _is_sensitive(key):
            event_dict[key] = REDACTED
            _count_redaction("field")
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _count_redaction(kind: str) -> None:
    """Every masked value is counted (`smslab_log_redactions_total{kind}`): masked, nothing leaked, but a
    path that hands personal data to the logger has appeared, and the alert on it points at the runbook."""
    from service.metrics import LOG_REDACTIONS

    LOG_REDACTIONS.labels(kind=kind).inc()


def _render_exception_then_redact(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Tracebacks quote local values (an httpx error quotes the URL), so they are rendered first and redacted.
    event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
    return redact(logger, method, event_dict)


class _LineWriter:
    """structlog's logger: each rendered line to the stream the root handler writes to (so both kinds of
    line go to one place, in order, under the handler's lock, and a handler given another stream takes
    ours with it)."""

    def __init__(self, handler: logging.StreamHandler[Any], name: str | None) -> None:
        self.handler = handler
        self.name = name

    def msg(self, message: str) -> None:
        self.handler.acquire()
        try:
            stream = self.handler.stream
            stream.write(message + "\n")
            stream.flush()
        finally:
            self.handler.release()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _add_writer_name(
    logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`logger`: the name the line's logger was asked for (`get_logger(name)`), as stdlib lines carry."""
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


class _SqlParametersRedacted(logging.Filter):
    """SQLAlchemy's engine logs each statement's parameters as a separate record (`[generated in ...]
    (values)`): names and other free text no pattern can recognise. They are dropped whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.args
            and isinstance(record.args, tuple)
            and str(record.msg).startswith("[")
            and len(record.args) >= 2
        ):
            record.args = (*record.args[:-1], REDACTED)
        return True


# SAQ's job lines carry epoch times (`scheduled: 1764639793`, `queued: 1764639793166`, in seconds and
# milliseconds): bare runs of 10 to 13 digits, which the bare-number pattern above rightly masks as phones.
# Every job would then count as personal data found in text, and the alert on that count
# (`smslab_log_redactions_total{kind="text"}`) would never stop firing. So these fields of SAQ's own
# records, and only these, are written as ISO times before redaction sees them.
_SAQ_TIMES = re.compile(r"\b(scheduled|queued|started|touched|completed): (\d{10}|\d{13})\b")


def _iso_time(match: re.Match[str]) -> str:
    digits = match[2]
    moment = datetime.fromtimestamp(int(digits) / (1000 if len(digits) == 13 else 1), UTC)
    return f"{match[1]}: {moment.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z"


class _SaqTimesReadable(logging.Filter):
    """SAQ's job times as ISO times (see `_SAQ_TIMES`); any other digits in its lines stay for `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "saq" or record.name.startswith("saq."):
            message = record.getMessage()
            readable = _SAQ_TIMES.sub(_iso_time, message)
            if readable != message:
                record.msg, record.args = readable, None
        return True


def configure_logging(
    level: str = "info", fmt: str = "auto", process: str = "smslab", redaction: bool = True
) -> None:
    """Route structlog and stdlib logging through one redacting pipeline, JSON lines or console.

    `redaction=False` is the lab's unsafe variant of safeguard 10 (`log_redaction`), never production's.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        _render_exception_then_redact if redaction else structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_SaqTimesReadable())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our own lines skip the standard library's logging: the same processors (redaction last), rendered
    # and written by `_LineWriter` to the handler's stream. Through a stdlib `Logger` each line also built
    # two `LogRecord`s and a formatter pass: 81 microseconds a line, half of what the API spends on a
    # whole `GET /health`. Libraries' lines (uvicorn, SAQ, SQLAlchemy) still come through the handler.
    structlog.configure(
        processors=[_add_writer_name, *shared, renderer],
        logger_factory=lambda *args: _LineWriter(handler, str(args[0]) if args else None),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    for name in ("uvicorn", "uvicorn.error", "saq", "sqlalchemy", "httpx", "litestar"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers[:] = []
        lib_logger.propagate = True
    # No access log: the API writes its own line per request (service.http, with the route template and
    # the request id). uvicorn logs an access line whenever this logger reaches a handler, and its worker
    # processes (`api --workers N`) set logging up after uvicorn silenced it: every request was logged
    # twice there, the second line a sixth of the API's CPU under load.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    engine_log = logging.getLogger("sqlalchemy.engine.Engine")
    engine_log.filters[:] = [_SqlParametersRedacted()] if redaction else []
    # httpx logs every request line at INFO: too chatty for a send loop, and URLs may carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(process=process)


def new_request_id() -> str:
    """32 random hex digits, as `uuid4().hex` gives, without building a UUID (0.5 us instead of 2)."""
    return os.urandom(16).hex()


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_from(given: str | None) -> str:
    """The request id to bind: the one given (a client's `X-Request-Id`, a job's) if it is short, plain and
    nothing redaction would mask (a phone number is not an id), else a new one. Bound ids are the one key
    `redact` leaves alone, so this is where they are made safe."""
    if given and _REQUEST_ID.match(given) and redact_text(given) == given:
        return given
    return new_request_id()


def bind_request_id(request_id: str | None) -> str:
    request_id = request_id_from(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def get_logger(name: str) -> Any:
    """A logger whose lines say `logger: name`, as the standard library's loggers' lines do."""
    return structlog.get_logger(name)


def configure_for(settings: Settings, process: str) -> None:
    """Logging as the settings say, redaction on unless the lab switched safeguard 10 off."""
    from service import safeguards

    configure_logging(
        settings.log_level,
        settings.log_format,
        process=process,
        redaction=safeguards.is_on(settings, safeguards.LOG_REDACTION),
    )
    if settings.log_sql:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
