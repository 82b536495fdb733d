"""Prometheus metrics: what the pipeline did, counted where it happened, and its shared state at scrape time.

Counters and histograms are defined once, here, at module level (creating one twice in a process is an
error), and moved only after what they count has committed: a rolled-back send is not a message sent.
Processes on one host share them through prometheus_client's multiprocess mode when
`SMSLAB_METRICS_DIR` is set (the lab and `smslab up` set it, and empty it before anything starts): then
one scrape of any API process shows the counts of every API and worker process of the host. Workers on
other hosts serve their own (`smslab worker --metrics-port`). Gauges that describe shared state (queue
depth, stuck campaigns, reserved credits) are not process counts at all: they are read from Redis and
the database when `/metrics` is scraped, so several API processes give one coherent answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chooses where values live when it is first imported: the directory is named to it
# here, before that import, whoever imports this module first (settings parsing does, early).
if os.environ.get("SMSLAB_METRICS_DIR") and not os.environ.get(MULTIPROCESS_ENV):
    os.makedirs(os.environ["SMSLAB_METRICS_DIR"], exist_ok=True)
    os.environ[MULTIPROCESS_ENV] = os.environ["SMSLAB_METRICS_DIR"]

from prometheus_client import (  # noqa: E402 - after the directory is named
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.registry import REGISTRY, Collector  # noqa: E402

STUCK_AFTER = timedelta(minutes=5)  # a sending campaign with no activity for this long is stuck

HTTP_REQUESTS = Counter(
    "smslab_http_requests_total", "HTTP requests answered, by route template", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "smslab_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_SHED = Counter(
    "smslab_http_shed_total",
    "Requests an API process refused with 503 overloaded (admission control: every slot taken), by route",
    ["route"],
)
ENQUEUES = Counter("smslab_enqueues_total", "Enqueue requests by outcome", ["outcome"])
MESSAGES_SENT = Counter("smslab_messages_sent_total", "Messages the provider accepted, recorded as sent")
MESSAGES_FAILED = Counter(
    "smslab_messages_failed_total", "Messages recorded as failed, by reason", ["reason"]
)
CREDITS_DEBITED = Counter("smslab_credits_debited_total", "Credits debited for messages sent")
WEBHOOK_EVENTS = Counter(
    "smslab_webhook_events_total",
    "Provider webhook deliveries by outcome (applied, duplicate, rejected, failed)",
    ["provider", "outcome"],
)
RATE_LIMITED = Counter(
    "smslab_rate_limited_total", "Requests refused by the tenant rate limits, by route class", ["route_class"]
)
RATE_LIMITER_UNAVAILABLE = Counter(
    "smslab_rate_limiter_unavailable_total", "Requests the rate limiter could not decide (Redis down)"
)
JOB_FAILURES = Counter("smslab_job_failures_total", "Queue jobs that raised, by function", ["function"])
LOG_REDACTIONS = Counter(
    "smslab_log_redactions_total",
    "Values masked in log lines before rendering: `field` (a sensitive key), `text` (found inside text)",
    ["kind"],
)
# Exported at 0 from the start: the personal-data alert compares this series over time, and a series that
# appears only at its first redaction (in a service whose lines never needed one) leaves it nothing to read.
for _kind in ("field", "text"):
    LOG_REDACTIONS.labels(kind=_kind)
RECONCILE_ACTIONS = Counter(
    "smslab_reconcile_actions_total", "What the reconciler did, by kind of action", ["action"]
)


def prepare_directory(directory: str) -> None:
    """Empty a multiprocess directory before the processes that share it start (stale files of a dead
    process would otherwise be summed in forever)."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


class _SharedState(Collector):
    """The scrape-time gauges, from values read (asynchronously) just before the scrape."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("smslab_queue_jobs", "Jobs in the queue, by state", labels=["state"])
        for state, count in sorted(self.values.get("queue", {}).items()):
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "smslab_stuck_campaigns",
            "Campaigns sending with no activity for five minutes or more",
            value=self.values.get("stuck_campaigns", 0),
        )
        yield GaugeMetricFamily(
            "smslab_wallets_out_of_balance",
            "Wallets whose balance is not the sum of their ledger entries (invariant I4; should be 0)",
            value=self.values.get("wallets_out_of_balance", 0),
        )
        yield GaugeMetricFamily(
            "smslab_credits_reserved",
            "Credits held by active reservations, all shops",
            value=self.values.get("credits_reserved", 0),
        )
        yield GaugeMetricFamily(
            "smslab_metrics_scrape_seconds",
            "Time the shared-state gauges took to read",
            value=self.values.get("scrape_seconds", 0.0),
        )


def render(shared_state: dict[str, Any]) -> tuple[bytes, str]:
    """The exposition text: this host's counters (every process's, in multiprocess mode) and the shared
    state read for this scrape (two expositions of distinct metrics, one after the other)."""
    if os.environ.get(MULTIPROCESS_ENV):
        counts = CollectorRegistry()
        MultiProcessCollector(counts)  # type: ignore[no-untyped-call]
    else:
        counts = REGISTRY
    shared = CollectorRegistry()
    shared.register(_SharedState(shared_state))
    return generate_latest(counts) + generate_latest(shared), CONTENT_TYPE_LATEST


def serve_on_port(port: int, host: str = "127.0.0.1") -> None:
    """This host's counters on a port of their own (a worker host without an API), in a thread."""
    from prometheus_client import start_http_server

    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)
