"""Fault rules for the fake providers: what goes wrong, where, how often and when, drawn from a seed.

A rule names a target, a kind, a probability, optionally a count (fire at most N times) and a window
(`start_s`/`end_s`, seconds since the simulator started or was reset). Each target draws from its own
generator seeded by `(seed, target)`, so the same seed and the same sequence of requests to an endpoint
give the same faults, whatever happens elsewhere. A target may be a prefix such as `mitto.*`.

Inbound targets (the providers' APIs the service calls): `mitto.send`, `mitto.lookup`, `stripe.api`,
`shopify.api`. Their kinds:
- `latency`: extra delay before answering; `ms` fixed, or `min_ms`/`max_ms` uniform, or
  `mean_ms`/`stddev_ms` normal (clipped at 0). Combines with any other kind.
- `status`: answer `status` (429, 500, 502, 503, ...) without doing the work; 429 carries `retry_after`.
- `reset`: cut the connection mid-response without doing the work.
- `timeout`: do the work, then hold the response for `seconds` (longer than the client waits).
- `accept_then_lose`: do the work, then lose the response: `mode` `cut` (the default) or `hang`.
- `report_first` (`mitto.send` only): deliver the accepted messages' delivery reports before answering.

Outbound targets (webhooks the providers send): `mitto.dlr`, `stripe.webhook`, `shopify.webhook`. Kinds
decided once per delivery: `latency` (a delay before it is sent: with a spread, deliveries overtake each
other), `duplicate` (`copies` extra deliveries of the same event, `spread_ms` apart), `drop` (never
delivered: lost; the provider's own state and lookups still know the truth). Kinds decided per attempt:
`bad_signature` (signature or token corrupted), `stale_timestamp` (signed or stamped `seconds` in the
past); the provider's retry schedule then runs as for any failed attempt.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

INBOUND_TARGETS = ("mitto.send", "mitto.lookup", "stripe.api", "shopify.api")
OUTBOUND_TARGETS = ("mitto.dlr", "stripe.webhook", "shopify.webhook")
INBOUND_KINDS = ("latency", "status", "reset", "timeout", "accept_then_lose", "report_first")
DELIVERY_KINDS = ("latency", "duplicate", "drop")
ATTEMPT_KINDS = ("bad_signature", "stale_timestamp")
KINDS = tuple(dict.fromkeys(INBOUND_KINDS + DELIVERY_KINDS + ATTEMPT_KINDS))
TERMINAL_KINDS = ("status", "reset", "timeout", "accept_then_lose", "duplicate", "drop")
ALLOWED_STATUSES = (400, 401, 403, 404, 409, 429, 500, 502, 503, 504)
_PARAMS: dict[str, set[str]] = {
    "latency": {"ms", "min_ms", "max_ms", "mean_ms", "stddev_ms"},
    "status": {"status", "retry_after"},
    "reset": set(),
    "timeout": {"seconds"},
    "accept_then_lose": {"mode", "seconds"},
    "report_first": set(),
    "duplicate": {"copies", "spread_ms"},
    "drop": set(),
    "bad_signature": set(),
    "stale_timestamp": {"seconds"},
}


class FaultSpecError(ValueError):
    """A fault rule that cannot be used; the message names the offending field."""


@dataclass
class FaultRule:
    id: str
    target: str
    kind: str
    probability: float = 1.0
    count: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0

    def matches(self, target: str) -> bool:
        if self.target.endswith("*"):
            return target.startswith(self.target[:-1])
        return self.target == target

    def in_window(self, elapsed: float) -> bool:
        return (self.start_s is None or elapsed >= self.start_s) and (
            self.end_s is None or elapsed < self.end_s
        )

    def latency_seconds(self, rng: random.Random) -> float:
        p = self.params
        if "ms" in p:
            return float(p["ms"]) / 1000
        if "min_ms" in p or "max_ms" in p:
            return rng.uniform(float(p.get("min_ms", 0)), float(p.get("max_ms", p.get("min_ms", 0)))) / 1000
        return max(0.0, rng.gauss(float(p.get("mean_ms", 0)), float(p.get("stddev_ms", 0)))) / 1000

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(where: str, value: Any, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultSpecError(f"{where}: must be a number")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise FaultSpecError(f"{where}: must be {bound}, got {value}")
    return float(value)


def _kinds_for(target: str) -> tuple[str, ...]:
    """The kinds that can apply to a target (a prefix allows the union of what it covers)."""
    covered = [
        t
        for t in INBOUND_TARGETS + OUTBOUND_TARGETS
        if (t.startswith(target[:-1]) if target.endswith("*") else t == target)
    ]
    kinds: list[str] = []
    for name in covered:
        if name in INBOUND_TARGETS:
            kinds += [k for k in INBOUND_KINDS if k != "report_first" or name == "mitto.send"]
        else:
            kinds += [*DELIVERY_KINDS, *ATTEMPT_KINDS]
    return tuple(dict.fromkeys(kinds))


def parse_rules(specs: Any, id_prefix: str, where: str) -> list[FaultRule]:
    """A scenario's `faults` list, each rule checked and named `{where}.faults[i]` in any error."""
    if not isinstance(specs, list):
        raise FaultSpecError(f"{where}.faults: must be a list of fault rules")
    return [parse_rule(spec, f"{id_prefix}{i}", f"{where}.faults[{i}]") for i, spec in enumerate(specs)]


def parse_rule(spec: Any, rule_id: str, where: str = "fault") -> FaultRule:
    if not isinstance(spec, dict):
        raise FaultSpecError(f"{where}: must be an object")
    unknown = set(spec) - {"target", "kind", "probability", "count", "params", "id", "start_s", "end_s"}
    if unknown:
        raise FaultSpecError(f"{where}.{sorted(unknown)[0]}: unknown field")
    target = spec.get("target")
    if not isinstance(target, str) or not target or not _kinds_for(target):
        known = ", ".join(INBOUND_TARGETS + OUTBOUND_TARGETS)
        raise FaultSpecError(f"{where}.target: must be one of {known} (or a prefix such as mitto.*)")
    kind = spec.get("kind")
    allowed = _kinds_for(target)
    if kind not in allowed:
        raise FaultSpecError(f"{where}.kind: for {target} must be one of {', '.join(allowed)}")
    probability = _number(f"{where}.probability", spec.get("probability", 1.0), 0.0, 1.0)
    count = spec.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FaultSpecError(f"{where}.count: must be a whole number >= 1")
    window = {
        name: _number(f"{where}.{name}", spec[name], 0.0) for name in ("start_s", "end_s") if name in spec
    }
    if "start_s" in window and "end_s" in window and window["end_s"] <= window["start_s"]:
        raise FaultSpecError(f"{where}.end_s: must be after start_s")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise FaultSpecError(f"{where}.params: must be an object")
    for name in params:
        if name not in _PARAMS[kind]:
            raise FaultSpecError(f"{where}.params.{name}: not a parameter of {kind}")
    for name, value in params.items():
        if name != "mode":
            _number(f"{where}.params.{name}", value, 0.0)
    if kind == "status" and params.get("status") not in ALLOWED_STATUSES:
        raise FaultSpecError(f"{where}.params.status: must be one of {ALLOWED_STATUSES}")
    if kind == "accept_then_lose" and params.get("mode", "cut") not in ("cut", "hang"):
        raise FaultSpecError(f"{where}.params.mode: must be cut or hang")
    return FaultRule(
        id=str(spec.get("id") or rule_id),
        target=target,
        kind=kind,
        probability=probability,
        count=count,
        start_s=window.get("start_s"),
        end_s=window.get("end_s"),
        params=params,
    )


@dataclass
class FaultDecision:
    delay: float = 0.0
    delayed_by: list[FaultRule] = field(default_factory=list)  # the latency rules that fired
    terminal: FaultRule | None = None
    modifiers: list[FaultRule] = field(
        default_factory=list
    )  # non-terminal kinds that fired (report_first...)

    @property
    def kind(self) -> str | None:
        return self.terminal.kind if self.terminal else None

    def has(self, kind: str) -> FaultRule | None:
        if self.terminal is not None and self.terminal.kind == kind:
            return self.terminal
        return next((rule for rule in self.modifiers if rule.kind == kind), None)


class FaultEngine:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rules: list[FaultRule] = []
        self._streams: dict[str, random.Random] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._may_apply: dict[str, bool] = {}  # forgotten whenever the rules change
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def stream(self, name: str) -> random.Random:
        rng = self._streams.get(name)
        if rng is None:
            rng = self._streams[name] = random.Random(f"{self.seed}:{name}")
        return rng

    def add(self, spec: Any) -> FaultRule:
        return self._add([(spec, "fault")])[0]

    def add_many(self, specs: list[Any], where: str = "faults") -> list[FaultRule]:
        """Validate every rule first; add all of them or none."""
        return self._add([(spec, f"{where}[{i}]") for i, spec in enumerate(specs)])

    def _add(self, specs: list[tuple[Any, str]]) -> list[FaultRule]:
        with self._lock:
            rules = [
                parse_rule(spec, f"f{self._next_id + i}", where) for i, (spec, where) in enumerate(specs)
            ]
            self._next_id += len(rules)
            self.rules.extend(rules)
            self._may_apply.clear()
            return rules

    def clear(self, target: str | None = None) -> int:
        with self._lock:
            before = len(self.rules)
            self.rules = [r for r in self.rules if target is not None and r.target != target]
            self._may_apply.clear()
            return before - len(self.rules)

    def reset(self) -> None:
        """Forget rules, counters, generator positions and the clock: the next run replays from the seed."""
        with self._lock:
            self.rules.clear()
            self._may_apply.clear()
            self._streams.clear()
            self.counters.clear()
            self._started = time.monotonic()

    def may_apply(self, target: str) -> bool:
        """Whether any rule names this target: lets a hot path skip deciding when nothing could fire."""
        known = self._may_apply.get(target)
        if known is None:
            known = self._may_apply[target] = any(rule.matches(target) for rule in self.rules)
        return known

    def decide(
        self, target: str, kinds: tuple[str, ...] | None = None, count_request: bool = True
    ) -> FaultDecision:
        """The faults for one request or delivery; `kinds` restricts which rules are considered."""
        decision = FaultDecision()
        with self._lock:
            if count_request:
                self.counters[target]["requests"] += 1
            rng = self.stream(target if kinds is None else f"{target}:{','.join(kinds)}")
            elapsed = time.monotonic() - self._started
            for rule in self.rules:
                if not rule.matches(target) or (kinds is not None and rule.kind not in kinds):
                    continue
                if rule.count is not None and rule.fired >= rule.count:
                    continue
                if not rule.in_window(elapsed):
                    continue
                if rng.random() >= rule.probability:
                    continue
                if rule.kind == "latency":
                    decision.delay += rule.latency_seconds(rng)
                    decision.delayed_by.append(rule)
                elif rule.kind in TERMINAL_KINDS:
                    if decision.terminal is not None:
                        continue
                    decision.terminal = rule
                else:
                    decision.modifiers.append(rule)
                rule.fired += 1
                self.counters[target][rule.kind] += 1
        return decision

    def counters_snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {target: dict(values) for target, values in self.counters.items()}
