"""Why each violation happened: every witness joined with its causes from the run's evidence.

A witness names what is wrong (a contact still stored, a payment never credited); an engineer needs to
know why. So each witness gets `causes`:
- the provider deliveries that concern it (the erasure of that customer, the events of that session,
  the reports of that message), each attempt with its answer, and whether the provider gave up;
- the nemesis events (and crashes) around the times involved, with what each did;
- the history operations involved (the merchant's request that started it, and its answer).
When every witness of a violated invariant comes down to a webhook the provider gave up on (every
attempt refused, or unanswered, until its retry horizon ran out), the service never heard of it: the
result says that the violation comes from unavailability past the provider's horizon, not from a
missing safeguard, and is `unknown` rather than `invalid`.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chaos.checker.evidence import DeliveryAttempt
from chaos.checker.result import CheckResult
from chaos.history import OK

AROUND_S = 3.0  # nemesis events this close to a witness's moments are shown with it


@dataclass
class Timeline:
    """The nemesis's events, on the wall clock, and the history's operations by index."""

    nemesis: list[dict[str, Any]] = field(default_factory=list)
    history_started_at: float = 0.0

    @classmethod
    def of(cls, run_dir: Path, manifest: dict[str, Any]) -> Timeline:
        clock = manifest.get("clock") or {}
        chaos_at = float(clock.get("chaos_started_at") or 0.0)
        events = []
        path = run_dir / "nemesis.jsonl"
        if path.exists() and chaos_at:
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                events.append({**entry, "at": chaos_at + float(entry.get("t", 0.0))})
        return cls(events, float(clock.get("history_started_at") or 0.0))

    def around(self, moments: list[float]) -> list[dict[str, Any]]:
        """The nemesis events (kills, restarts, toxics, crashes) within AROUND_S of any moment."""
        if not moments:
            return []
        low, high = min(moments) - AROUND_S, max(moments) + AROUND_S
        keys = ("action", "target", "phase", "outcome")
        return [
            {**{k: e.get(k) for k in keys}, "at": round(e["at"], 3)}
            for e in self.nemesis
            if low <= e["at"] <= high
        ][:10]


def _attempts(attempts: list[DeliveryAttempt]) -> dict[str, Any]:
    ordered = sorted(attempts, key=lambda a: (a.delivery, a.attempt))
    return {
        "type": ordered[0].type,
        "attempts": [
            {"attempt": a.attempt, "at": round(a.t, 3), "status": a.status, "error": a.error} for a in ordered
        ][:12],
        "acknowledged": any(a.acknowledged for a in ordered),
        "provider_gave_up": any(a.gave_up for a in ordered) and not any(a.acknowledged for a in ordered),
    }


@dataclass
class Causes:
    timeline: Timeline
    by_event: dict[str, list[DeliveryAttempt]]
    by_message: dict[str, list[DeliveryAttempt]]
    by_object: dict[str, list[DeliveryAttempt]]
    history: list[dict[str, Any]]

    @classmethod
    def of(
        cls,
        run_dir: Path,
        manifest: dict[str, Any],
        deliveries: list[DeliveryAttempt],
        history: list[dict[str, Any]],
    ) -> Causes:
        by_event: dict[str, list[DeliveryAttempt]] = defaultdict(list)
        by_message: dict[str, list[DeliveryAttempt]] = defaultdict(list)
        by_object: dict[str, list[DeliveryAttempt]] = defaultdict(list)
        for attempt in deliveries:
            if attempt.event:
                by_event[attempt.event].append(attempt)
            if attempt.message:
                by_message[attempt.message].append(attempt)
            if attempt.object:
                by_object[attempt.object].append(attempt)
        return cls(Timeline.of(run_dir, manifest), by_event, by_message, by_object, history)

    def _deliveries(self, attempts: list[DeliveryAttempt]) -> list[dict[str, Any]]:
        by_delivery: dict[tuple[str | None, int], list[DeliveryAttempt]] = defaultdict(list)
        for attempt in attempts:
            by_delivery[(attempt.event, attempt.delivery)].append(attempt)
        return [_attempts(group) for group in by_delivery.values()][:6]

    def _with_nemesis(self, causes: dict[str, Any], moments: list[float]) -> dict[str, Any]:
        near = self.timeline.around(moments)
        if near:
            causes["nemesis"] = near
        return causes

    # --- per kind of witness -------------------------------------------------------------------------
    def erased_customer(self, customer: Any) -> dict[str, Any]:
        """The merchant's erasure request for the customer, and what became of Shopify's delivery of it."""
        requests = _erasure_requests(self.history, customer)
        causes: dict[str, Any] = {
            "erasure_requested": [
                {
                    "history_index": e.get("index"),
                    "at": round(self.timeline.history_started_at + e.get("time", 0), 3),
                }
                for e in requests
            ]
        }
        attempts = [a for event in _erasure_events(requests) for a in self.by_event.get(event, [])]
        causes["deliveries"] = self._deliveries(attempts)
        return self._with_nemesis(causes, [a.t for a in attempts])

    def payment(self, session: str) -> dict[str, Any]:
        attempts = self.by_object.get(session, [])
        return self._with_nemesis({"deliveries": self._deliveries(attempts)}, [a.t for a in attempts])

    def message(self, message_id: str) -> dict[str, Any]:
        attempts = self.by_message.get(message_id, [])
        return self._with_nemesis({"deliveries": self._deliveries(attempts)}, [a.t for a in attempts])

    @functools.cached_property
    def _enqueue_answers(self) -> dict[Any, list[dict[str, Any]]]:
        """The history's enqueue answers by campaign, gathered once for all of a run's witnesses."""
        by_campaign: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for e in self.history:
            if e.get("f") == "enqueue" and e.get("type") != "invoke":
                by_campaign[e["value"].get("campaign")].append(e)
        return by_campaign

    def enqueues(self, campaign_id: int) -> dict[str, Any]:
        """The merchant's enqueues of the campaign, each with its answer, and the nemesis around them."""
        answers = self._enqueue_answers.get(campaign_id, [])
        keep = ("status", "problem", "error", "duplicate")
        causes: dict[str, Any] = {
            "enqueue_answers": [
                {"history_index": e.get("index"), "type": e.get("type")}
                | {k: e["value"][k] for k in keep if e["value"].get(k) is not None}
                for e in answers[:10]
            ]
        }
        started = self.timeline.history_started_at
        return self._with_nemesis(causes, [started + float(e.get("time", 0)) for e in answers])

    def moments(self, moments: list[float]) -> dict[str, Any]:
        return self._with_nemesis({}, moments)

    def history_moment(self, history_time: float) -> dict[str, Any]:
        """A moment of the history (seconds since it started): the nemesis events around it."""
        return self.moments([self.timeline.history_started_at + history_time])


def _erasure_requests(history: list[dict[str, Any]], customer: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in history
        if e.get("f") == "redact" and e.get("type") == OK and e["value"].get("customer") == customer
    ]


def _erasure_events(requests: list[dict[str, Any]]) -> list[str]:
    return [str((e["value"].get("response") or {}).get("event_id")) for e in requests]


def concerned(results: list[CheckResult], history: list[dict[str, Any]]) -> Callable[[DeliveryAttempt], bool]:
    """Whether a delivery concerns a witness of a violated invariant (the ones `attach` looks up), so
    that only those are kept from a ledger of millions."""
    events: set[str] = set()
    objects: set[str] = set()
    messages: set[str] = set()
    for result in results:
        if result.valid is True:
            continue
        for witness in result.witnesses:
            if "erased_customer" in witness:
                events.update(_erasure_events(_erasure_requests(history, witness["erased_customer"])))
            elif "session" in witness:
                objects.add(str(witness["session"]))
            elif "refund" in witness:  # Stripe's refund events are about the charge
                objects.add(str(witness.get("charge") or witness["refund"]))
            elif "message_id" in witness:
                messages.add(str(witness["message_id"]))
    return lambda d: d.event in events or d.object in objects or d.message in messages


def _iso(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _gave_up(causes: dict[str, Any]) -> bool:
    deliveries = causes.get("deliveries") or []
    return bool(deliveries) and all(d["provider_gave_up"] for d in deliveries)


def attach(results: list[CheckResult], causes: Causes) -> None:
    """Each witness of each violated (or undecided) invariant gets its `causes`."""
    for result in results:
        if result.valid is True:
            continue
        explained_by_give_up = 0
        for witness in result.witnesses:
            found: dict[str, Any] = {}
            if "erased_customer" in witness:
                found = causes.erased_customer(witness["erased_customer"])
            elif "session" in witness:
                found = causes.payment(str(witness["session"]))
            elif "refund" in witness:
                found = causes.payment(str(witness.get("charge") or witness["refund"]))
            elif "message_id" in witness:
                found = causes.message(str(witness["message_id"]))
            elif "accepted_at" in witness:
                found = causes.moments([float(t) for t in witness["accepted_at"]])
            elif "enqueued_campaign_without_reservation" in witness:
                found = causes.enqueues(int(witness["enqueued_campaign_without_reservation"]))
            elif "history_time" in witness:
                found = causes.history_moment(float(witness["history_time"]))
            elif "last_activity_at" in witness:
                moment = _iso(witness["last_activity_at"])
                found = causes.moments([moment] if moment else [])
            if found:
                witness["causes"] = found
                explained_by_give_up += _gave_up(found)
        if result.witnesses and explained_by_give_up == len(result.witnesses) and result.valid is False:
            result.valid = "unknown"
            result.note = (
                f"every witness comes from a webhook the provider gave up on ({explained_by_give_up}): the "
                "service was unavailable past the provider's retry horizon and never received it; this is "
                "not a missing safeguard (see each witness's causes)"
            )
