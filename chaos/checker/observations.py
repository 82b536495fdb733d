"""Observations (not invariants): do the service's own metrics tell the truth?

After settling, the last scrape of `/metrics` (`metrics.jsonl`) is set beside ground truth: messages
the provider really accepted, the credits those messages cost, the webhook deliveries the service really
answered. Where a counter disagrees, the service's metrics are lying (an increment before a commit that
rolled back, one missed on a path, a process's counts lost), and the observation says by how much. It
never changes the verdict: the invariants are proven from ground truth, and this judges the dashboards.
"""

from __future__ import annotations

import json
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, filterfalse
from pathlib import Path
from typing import Any

from chaos.checker.coverage import load_scenario_as_run
from chaos.checker.evidence import AcceptedLike, DatabaseSnapshot, DeliveryOutcome
from chaos.metrics_scrape import last_scrape


@dataclass
class DeliveryTally:
    """Webhook attempts by provider: answered 2xx as the provider saw it, and those that got no answer
    at all (a timeout, a cut connection: the service may have applied them and its answer was lost)."""

    answered: dict[str, int] = field(default_factory=dict)
    unanswered: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, deliveries: Sequence[DeliveryOutcome]) -> DeliveryTally:
        tally = cls()
        tally.add(deliveries)
        return tally

    def add(self, deliveries: Sequence[DeliveryOutcome]) -> None:
        """Count the next block of the delivery ledger in (the acknowledged ones counted in C: most are)."""
        answered = Counter(compress(map(_PROVIDER, deliveries), map(_ACKNOWLEDGED, deliveries)))
        unanswered = Counter(
            a.provider for a in filterfalse(_ACKNOWLEDGED, deliveries) if a.may_have_taken_effect
        )
        for provider, count in answered.items():
            self.answered[provider] = self.answered.get(provider, 0) + count
        for provider, count in unanswered.items():
            self.unanswered[provider] = self.unanswered.get(provider, 0) + count


_PROVIDER = operator.attrgetter("provider")
_ACKNOWLEDGED = operator.attrgetter("acknowledged")


def _total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def _compare(
    what: str, reported: float, truth: float, leeway: float = 0, lost: float = 0, lost_why: str = ""
) -> dict[str, Any]:
    """`leeway`: how far above the truth the metric may honestly be (events the truth cannot see);
    `lost`: how far below it (counts a killed process never made, `lost_why` says whose)."""
    entry: dict[str, Any] = {"what": what, "metric": round(reported, 3), "truth": round(truth, 3)}
    if leeway:
        entry["leeway"] = leeway
    if lost:
        entry["may_be_lost"] = lost
        entry["lost_because"] = lost_why
    entry["agrees"] = truth - lost - 0.5 < reported < truth + leeway + 0.5
    if not entry["agrees"] or reported < truth - 0.5:
        entry["off_by"] = round(reported - truth, 3)
    return entry


def worker_deaths(run_dir: Path) -> int:
    """Worker processes that died mid-run: SIGKILLed by the nemesis, or by a failpoint (a crash)."""
    path = run_dir / "nemesis.jsonl"
    if not path.exists():
        return 0
    deaths = 0
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("phase") != "start" or not str(event.get("target", "")).startswith("worker"):
            continue
        killed = event.get("action") == "kill_worker" and str(event.get("outcome", "")).startswith("SIGKILL")
        deaths += killed or event.get("action") == "crash"
    return deaths


def _lost_to_deaths(run_dir: Path) -> tuple[int, str]:
    """The most messages a run's worker deaths can have left uncounted. A worker counts a batch's sends
    just after committing them (never before: a rolled-back send must not count), so a SIGKILL between
    the commit and the count loses that batch's increment; each death loses at most the batches it had in
    flight. In a run without deaths the counters must match exactly."""
    deaths = worker_deaths(run_dir)
    scenario = load_scenario_as_run(run_dir)
    if not deaths or scenario is None:
        return 0, ""
    services = scenario.services
    in_flight = services.worker_concurrency * services.batch_size
    return deaths * in_flight, f"{deaths} worker deaths, each with up to {in_flight} messages in flight"


def metrics_against_truth(
    run_dir: Path,
    acceptances: Sequence[AcceptedLike],
    snapshot: DatabaseSnapshot,
    deliveries: DeliveryTally | None,
    outside: DeliveryTally | None = None,
) -> dict[str, Any]:
    """`outside`: webhook posts by provider that no provider's ledger holds (a load run's webhook storm,
    as its Locust processes counted them): those answered 2xx are added to the truth, exactly, and those
    that got no answer (the service may have counted them) to the leeway, as the providers' own are."""
    scrape = last_scrape(run_dir)
    if scrape is None:
        return {"available": False, "why": "no scrape of /metrics in the run folder (metrics.jsonl)"}
    samples: dict[str, float] = scrape["samples"]
    segments = {c["id"]: int(c["segments"] or 1) for c in snapshot.campaigns.values()}
    credits = sum(segments.get(a.campaign_id or -1, 1) for a in acceptances)
    lost, lost_why = _lost_to_deaths(run_dir)
    most_segments = max(segments.values(), default=1)
    rows = [
        _compare(
            "messages sent",
            _total(samples, "smslab_messages_sent_total"),
            len(acceptances),
            0,
            lost,
            lost_why,
        ),
        _compare(
            "credits debited",
            _total(samples, "smslab_credits_debited_total"),
            credits,
            0,
            lost * most_segments,
            lost_why,
        ),
    ]
    if deliveries is not None:
        extra = outside or DeliveryTally()
        for provider in sorted({*deliveries.answered, *extra.answered}):
            counted = sum(
                _total(samples, "smslab_webhook_events_total", provider=provider, outcome=outcome)
                for outcome in ("applied", "duplicate")
            )
            row = _compare(
                f"{provider} webhook deliveries answered 2xx",
                counted,
                deliveries.answered.get(provider, 0) + extra.answered.get(provider, 0),
                deliveries.unanswered.get(provider, 0) + extra.unanswered.get(provider, 0),
            )
            if provider in extra.answered or provider in extra.unanswered:
                row["of_which_load"] = {
                    "answered": extra.answered.get(provider, 0),
                    "unanswered": extra.unanswered.get(provider, 0),
                }
            rows.append(row)
    return {
        "available": True,
        "scraped_at": scrape["t"],
        "comparisons": rows,
        "agree": all(r["agrees"] for r in rows),
    }
