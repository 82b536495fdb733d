"""The load gate: a load run's thresholds held against Locust's figures, by request class.

Pure functions over plain rows, with no asyncio and no Locust import, because three places judge by the
same rule: the locustfile's `quitting` listener (from `environment.stats`, to set Locust's exit code as
its docs show for CI), `smslab load` and `smslab check` (from `load_stats.csv`, so a run folder can be
judged again anywhere). A request class is one row of Locust's table: method and route template
(`POST /api/campaigns/{id}/enqueue`). Rows whose name ends in `NOISY_SUFFIX` are the noisy tenant's: it
is refused on purpose, so its latency is not gated (its 429s are successes; its 5xx and timeouts still
fail).

A 503 `overloaded` with `Retry-After` is what a full API process owes a client (service/admission.py):
it changed nothing and says when to come back, so it is not a failure; such refusals ("shed") are
counted by class (`load_shed.json`, written beside the table by the master) and gated apart, by
`max_shed_ratio`: a scenario below saturation bounds them near zero, one past it lets them be the
answer.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NOISY_SUFFIX = " (noisy tenant)"
STATS_CSV = "load_stats.csv"
FAILURES_CSV = "load_failures.csv"
SHED_JSON = "load_shed.json"  # {request class: 503 overloaded answers}
AGGREGATED = "Aggregated"
# Failures whose error names one of these got no answer because no API process was there: the port
# refused the connection (a killed API, not yet back), or the connection was cut before any answer (the
# process died under the request). A timeout is not among them: a live API that did not answer in time.
UNREACHABLE = ("ConnectionRefusedError", "HTTPConnectionClosed")


def unreachable(error: str) -> bool:
    return any(name in error for name in UNREACHABLE)


@dataclass(frozen=True)
class Thresholds:
    """What a load run must reach; 0 switches a bound off."""

    max_failure_ratio: float = 0.01  # failures but the unreachable / requests: 5xx, timeouts, bad 4xx
    # Requests no API process was there to answer (refused, or cut as it died) / requests: only a
    # scenario that kills the API may see any, while it restarts.
    max_unreachable_ratio: float = 0.0
    p95_ms: float = 0.0  # each request class's 95th percentile
    p99_ms: float = 1000.0  # each request class's 99th percentile
    min_rps: float = 0.0  # requests per second over the whole run
    # Requests refused 503 overloaded with Retry-After (admission control) / requests: the owed answer
    # past saturation, so unbounded by default; a scenario below saturation bounds it.
    max_shed_ratio: float = 1.0


@dataclass(frozen=True)
class StatRow:
    method: str
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def request_class(self) -> str:
        return f"{self.method} {self.name}".strip()

    @property
    def noisy(self) -> bool:
        return self.name.endswith(NOISY_SUFFIX)


@dataclass
class GateResult:
    passed: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    why: list[str] = field(default_factory=list)  # each failed check, as a sentence

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(text: str | None) -> float:
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def rows_from_csv(path: Path) -> tuple[list[StatRow], StatRow | None]:
    """Locust's `_stats.csv`: each request class's row, and the aggregated one (None without it)."""
    rows: list[StatRow] = []
    total = None
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            row = StatRow(
                method=record.get("Type") or "",
                name=record.get("Name") or "",
                requests=int(_number(record.get("Request Count"))),
                failures=int(_number(record.get("Failure Count"))),
                rps=_number(record.get("Requests/s")),
                p50_ms=_number(record.get("50%")),
                p95_ms=_number(record.get("95%")),
                p99_ms=_number(record.get("99%")),
            )
            if row.name == AGGREGATED and not row.method:
                total = row
            else:
                rows.append(row)
    return rows, total


def evaluate(
    rows: list[StatRow],
    total: StatRow | None,
    thresholds: Thresholds,
    unanswerable: int = 0,
    shed: dict[str, int] | None = None,
) -> GateResult:
    """Each threshold against the figures; the gate passes only if every check does, and only if Locust
    made any request at all (a load test that sent nothing passes nothing). `unanswerable`: how many of
    the failures found no API process to answer them (Locust's error table: `UNREACHABLE`), judged
    apart: that is what a killed API gives while it restarts, where a 5xx or a timeout is the service
    failing under load. `shed`: each request class's 503 overloaded answers (successes in the table)."""
    result = GateResult(True)

    def check(what: str, value: float, bound: float, ok: bool, sentence: str) -> None:
        result.checks.append({"check": what, "value": round(value, 4), "bound": bound, "passed": ok})
        if not ok:
            result.passed = False
            result.why.append(sentence)

    requests = total.requests if total else sum(r.requests for r in rows)
    failures = total.failures if total else sum(r.failures for r in rows)
    refused = min(unanswerable, failures)
    check("requests", requests, 1, requests >= 1, "Locust made no request")
    if total is not None:
        # The latency checks below are per class: a table whose classes lost their figures (a
        # Locust that emptied them before they were written) would pass every one of them unjudged.
        in_classes = sum(r.requests for r in rows)
        check(
            "classes_add_up",
            in_classes,
            requests,
            in_classes == requests,
            f"Locust's request classes hold {in_classes} of its {requests} requests: the figures by class "
            "are incomplete, so their latency cannot be judged",
        )
    ratio = (failures - refused) / requests if requests else 0.0
    bound = thresholds.max_failure_ratio
    check(
        "failure_ratio",
        ratio,
        bound,
        ratio <= bound,
        f"failure ratio {ratio:.2%} above {bound:.2%} ({failures - refused} of {requests} requests: "
        "5xx, timeouts, 4xx a correct client never earns)",
    )
    refused_ratio = refused / requests if requests else 0.0
    check(
        "unreachable_ratio",
        refused_ratio,
        thresholds.max_unreachable_ratio,
        refused_ratio <= thresholds.max_unreachable_ratio,
        f"unreachable {refused_ratio:.2%}, above {thresholds.max_unreachable_ratio:.2%} ({refused} of "
        f"{requests} requests refused or cut before an answer: no API process there)",
    )
    shed_count = sum((shed or {}).values())
    shed_ratio = shed_count / requests if requests else 0.0
    check(
        "shed_ratio",
        shed_ratio,
        thresholds.max_shed_ratio,
        shed_ratio <= thresholds.max_shed_ratio,
        f"shed {shed_ratio:.2%}, above {thresholds.max_shed_ratio:.2%} ({shed_count} of {requests} requests "
        "refused 503 overloaded: the API was past saturation)",
    )
    rps = total.rps if total else sum(r.rps for r in rows)
    if thresholds.min_rps:
        check(
            "min_rps",
            rps,
            thresholds.min_rps,
            rps >= thresholds.min_rps,
            f"{rps:.0f} requests/s, below {thresholds.min_rps:g}",
        )
    for row in rows:
        if row.noisy or not row.requests:
            continue
        for name, value, limit in (
            ("p95_ms", row.p95_ms, thresholds.p95_ms),
            ("p99_ms", row.p99_ms, thresholds.p99_ms),
        ):
            if limit:
                check(
                    f"{name} {row.request_class}",
                    value,
                    limit,
                    value <= limit,
                    f"{row.request_class}: {name.removesuffix('_ms')} {value:.0f} ms above {limit:g} ms",
                )
    return result


def unreachable_from_csv(path: Path) -> int:
    """Locust's `_failures.csv`: how many failures found no API process to answer them."""
    if not path.exists():
        return 0
    with path.open(newline="") as handle:
        return sum(
            int(_number(record.get("Occurrences")))
            for record in csv.DictReader(handle)
            if unreachable(record.get("Error") or "")
        )


def evaluate_folder(run_dir: Path, thresholds: Thresholds) -> GateResult:
    """The gate from a run folder's `load_stats.csv` (and `load_failures.csv`); a folder without the
    first fails it."""
    path = run_dir / STATS_CSV
    if not path.exists():
        return GateResult(False, [], [f"no {STATS_CSV}: Locust did not finish its run"])
    rows, total = rows_from_csv(path)
    unanswerable = unreachable_from_csv(run_dir / FAILURES_CSV)
    return evaluate(rows, total, thresholds, unanswerable, shed_from_json(run_dir / SHED_JSON))


def shed_from_json(path: Path) -> dict[str, int]:
    """`load_shed.json`: each request class's 503 overloaded answers ({} without the file: none counted)."""
    try:
        counts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(name): int(count) for name, count in counts.items()} if isinstance(counts, dict) else {}


def summary(run_dir: Path) -> list[dict[str, Any]]:
    """The load summary under the verdict: each request class's requests/s and percentiles, then the total."""
    path = run_dir / STATS_CSV
    if not path.exists():
        return []
    rows, total = rows_from_csv(path)
    shed = shed_from_json(run_dir / SHED_JSON)
    listed = [*sorted(rows, key=lambda r: -r.requests), *([total] if total else [])]
    return [
        {
            "request_class": "total" if row is total else row.request_class,
            "requests": row.requests,
            "failures": row.failures,
            "shed": sum(shed.values()) if row is total else shed.get(row.request_class, 0),
            "rps": round(row.rps, 1),
            "p50_ms": row.p50_ms,
            "p95_ms": row.p95_ms,
            "p99_ms": row.p99_ms,
        }
        for row in listed
    ]
