"""Fault rules for the fake providers: what goes wrong, where, how often, drawn from a seed.

A rule names a target endpoint (`mitto.send`, `mitto.lookup`, or a prefix such as `mitto.*`), a kind, a
probability and optionally a count (fire at most N times). Each target draws from its own generator
seeded by `(seed, target)`, so the same seed and the same sequence of requests to an endpoint give the
same faults, whatever happens on other endpoints.

Kinds:
- `latency`: extra delay before answering; `ms` fixed, or `min_ms`/`max_ms` uniform, or
  `mean_ms`/`stddev_ms` normal (clipped at 0). Combines with any other kind.
- `status`: answer `status` (429, 500, 502, 503) without doing the work; 429 carries `retry_after`.
- `reset`: cut the connection mid-response without doing the work.
- `timeout`: do the work, then hold the response for `seconds` (longer than the client waits).
- `accept_then_lose`: do the work, then lose the response: `mode` `cut` (connection dropped mid-response,
  the default) or `hang` (no answer for `seconds`).
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("latency", "status", "reset", "timeout", "accept_then_lose")
TERMINAL_KINDS = ("status", "reset", "timeout", "accept_then_lose")
ALLOWED_STATUSES = (400, 401, 403, 404, 409, 429, 500, 502, 503, 504)
_PARAMS: dict[str, set[str]] = {
    "latency": {"ms", "min_ms", "max_ms", "mean_ms", "stddev_ms"},
    "status": {"status", "retry_after"},
    "reset": set(),
    "timeout": {"seconds"},
    "accept_then_lose": {"mode", "seconds"},
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
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0

    def matches(self, target: str) -> bool:
        if self.target.endswith("*"):
            return target.startswith(self.target[:-1])
        return self.target == target

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


def parse_rule(spec: Any, rule_id: str, where: str = "fault") -> FaultRule:
    if not isinstance(spec, dict):
        raise FaultSpecError(f"{where}: must be an object")
    unknown = set(spec) - {"target", "kind", "probability", "count", "params", "id"}
    if unknown:
        raise FaultSpecError(f"{where}.{sorted(unknown)[0]}: unknown field")
    target = spec.get("target")
    if not isinstance(target, str) or not target:
        raise FaultSpecError(f"{where}.target: must name an endpoint, e.g. mitto.send or mitto.*")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise FaultSpecError(f"{where}.kind: must be one of {', '.join(KINDS)}")
    probability = _number(f"{where}.probability", spec.get("probability", 1.0), 0.0, 1.0)
    count = spec.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FaultSpecError(f"{where}.count: must be a whole number >= 1")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise FaultSpecError(f"{where}.params: must be an object")
    for name in params:
        if name not in _PARAMS[kind]:
            raise FaultSpecError(f"{where}.params.{name}: not a parameter of {kind}")
    for name, value in params.items():
        if name != "mode":
            _number(f"{where}.params.{name}", value, 0.0)
    if kind == "status":
        status = params.get("status")
        if status not in ALLOWED_STATUSES:
            raise FaultSpecError(f"{where}.params.status: must be one of {ALLOWED_STATUSES}")
    if kind == "accept_then_lose" and params.get("mode", "cut") not in ("cut", "hang"):
        raise FaultSpecError(f"{where}.params.mode: must be cut or hang")
    return FaultRule(
        id=str(spec.get("id") or rule_id),
        target=target,
        kind=kind,
        probability=probability,
        count=count,
        params=params,
    )


@dataclass
class FaultDecision:
    delay: float = 0.0
    terminal: FaultRule | None = None

    @property
    def kind(self) -> str | None:
        return self.terminal.kind if self.terminal else None


class FaultEngine:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rules: list[FaultRule] = []
        self._streams: dict[str, random.Random] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def stream(self, target: str) -> random.Random:
        rng = self._streams.get(target)
        if rng is None:
            rng = self._streams[target] = random.Random(f"{self.seed}:{target}")
        return rng

    def add(self, spec: Any) -> FaultRule:
        return self._add([(spec, "fault")])[0]

    def add_many(self, specs: list[Any]) -> list[FaultRule]:
        """Validate every rule first; add all of them or none."""
        return self._add([(spec, f"faults[{i}]") for i, spec in enumerate(specs)])

    def _add(self, specs: list[tuple[Any, str]]) -> list[FaultRule]:
        with self._lock:
            rules = [
                parse_rule(spec, f"f{self._next_id + i}", where) for i, (spec, where) in enumerate(specs)
            ]
            self._next_id += len(rules)
            self.rules.extend(rules)
            return rules

    def clear(self, target: str | None = None) -> int:
        with self._lock:
            before = len(self.rules)
            self.rules = [r for r in self.rules if target is not None and r.target != target]
            return before - len(self.rules)

    def reset(self) -> None:
        """Forget rules, counters and generator positions: the next run replays from the seed."""
        with self._lock:
            self.rules.clear()
            self._streams.clear()
            self.counters.clear()

    def decide(self, target: str) -> FaultDecision:
        decision = FaultDecision()
        with self._lock:
            self.counters[target]["requests"] += 1
            rng = self.stream(target)
            for rule in self.rules:
                if not rule.matches(target):
                    continue
                if rule.count is not None and rule.fired >= rule.count:
                    continue
                if rng.random() >= rule.probability:
                    continue
                if rule.kind == "latency":
                    decision.delay += rule.latency_seconds(rng)
                elif decision.terminal is None:
                    decision.terminal = rule
                else:
                    continue
                rule.fired += 1
                self.counters[target][rule.kind] += 1
        return decision

    def counters_snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {target: dict(values) for target, values in self.counters.items()}
