"""I9: one tenant cannot starve another.

Ground truth: the clients' history only (what the API answered, and when the client saw it). While a
shop floods (its operations carry `flood` in the history: the noisy tenant's), three things must hold:
- every other shop's request to the API that overlapped the flood is answered (no 5xx, no timeout, and
  not refused 503 `overloaded` by a process the flood filled) within the scenario's `latency_bound_s`
  (a `starved` witness: the request, how long it took, and how
  many of the flood's requests were in flight when it was sent);
- every request of the flooding shop is answered, never with a 5xx or a timeout (`flood_unanswered`), and
  every 429 carries a `Retry-After` of at least one whole second (`no_retry_after`);
- no request past the shop's budget is served (`over_limit`): the flood's requests the API served (any
  answer but 429) in any one period of a route class's limit are at most what GCRA admits in that time
  (the burst, then one per interval; a 503 `overloaded` is not served). Counted conservatively, from
  invocation to completion: a request is only counted inside a window it was wholly inside.
The limits come from the run's manifest (the service's settings), the same whether or not the safeguard
was on: with it off, the flood is served as it comes, and both the others' latency and the budget show
it. Safeguard: the tenant rate limits (9).

The nemesis's faults on what the API needs to answer (the API killed or crashed, Redis restarted, the
database's connections cut, a toxic on the database's or Redis's proxy) are not the flooding tenant's
doing: a call of any shop that overlapped such a fault's window (from the fault until it was undone, plus
`RECOVERY_S` for the restarted process to catch up) is excused from `starved` and `flood_unanswered`, and
the flood's calls served while Redis was down (the limiter's `allow` policy serves them unlimited) from
`over_limit`; the counts say how many were excused. A call the load generator itself cut short as it
stopped (`interrupted` in the history) is nobody's answer and is left out likewise.

A run without a flood has nothing to judge here: valid, with a note saying so. A run whose scenario has
a noisy tenant that never flooded, or whose flood overlapped no other shop's request, is unknown.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from chaos.checker.result import CheckResult
from chaos.history import FAIL, INFO, INVOKE, OK
from chaos.operations import API_OPERATIONS

ID = "I9"
TITLE = "one tenant cannot starve another"
SLACK = 1  # one request of slack on the budget: the server's clock and the client's are not one
RECOVERY_S = 5.0  # after a fault is undone: the restarted process starts and works off its backlog
LEAD_S = 1.0  # before a fault's logged time: the nemesis logs an action once it is done (a kill's victims
# see their connections cut a moment before the line is written)
# Nemesis actions that take away what the API answers with; a toxic only on these proxies (the providers'
# proxy slows the workers' sends, not the API).
DISRUPTING = ("kill_api", "restart_redis", "cut_db_connections")
DISRUPTED_PROXIES = ("db", "redis")
INTERRUPTED = "interrupted"  # the load generator's own stop cut the call short (loadtests/locustfile.py)
OVERLOADED = "overloaded"  # a full API process refused the call before any handler ran (service/admission.py)


def disruptions(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The nemesis's faults on the API's path, as windows on the history's clock (seconds since it
    started): `nemesis.jsonl`'s times count from the chaos phase's start, which the manifest's `clock`
    places on the wall clock beside the history's."""
    path = run_dir / "nemesis.jsonl"
    if not path.exists():
        return []
    clock = manifest.get("clock") or {}
    offset = float(clock.get("chaos_started_at", 0) or 0) - float(clock.get("history_started_at", 0) or 0)
    opened: dict[tuple[Any, ...], float] = {}
    windows: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        action, target, at = event.get("action"), event.get("target"), float(event.get("t", 0))
        disrupting = (
            action in DISRUPTING
            or (action == "crash" and target == "api")
            or (action == "toxic" and target in DISRUPTED_PROXIES)
        )
        if not disrupting:
            continue
        key = (action, target, event.get("planned_at"))
        if event.get("phase") == "end":
            start = opened.pop(key, at)
            windows.append({"action": action, "target": target, "from": start + offset, "to": at + offset})
        elif action in ("crash", "cut_db_connections"):  # nothing to undo: over when it happened
            # A crash is seen up to a supervisor's poll after the process died.
            windows.append({"action": action, "target": target, "from": at + offset - 1, "to": at + offset})
        else:
            opened[key] = at
    for (action, target, _planned), start in opened.items():  # never undone within the chaos phase
        windows.append({"action": action, "target": target, "from": start + offset, "to": math.inf})
    return sorted(windows, key=lambda w: w["from"])


def _overlaps(call: dict[str, Any], windows: list[dict[str, Any]], recovery_s: float) -> bool:
    end = call["answered_at"] if call["answered_at"] is not None else math.inf
    return any(call["invoked_at"] <= w["to"] + recovery_s and end >= w["from"] - LEAD_S for w in windows)


def _call(start: dict[str, Any], end: dict[str, Any] | None) -> dict[str, Any]:
    """One API call from its invocation and its completion (None: never answered, as a timeout)."""
    answer = end["value"] if end is not None else {"error": "never answered"}
    return {
        "index": start["index"],
        "process": start["process"],
        "f": start["f"],
        "shop": start["value"].get("shop"),
        "flood": bool(start["value"].get("flood")),
        "route_class": start["value"].get("route_class"),
        "invoked_at": start["time"],
        "answered_at": end["time"] if end is not None else None,
        "kind": end["type"] if end is not None else INFO,
        "status": answer.get("status"),
        "problem": answer.get("problem"),
        "error": answer.get("error"),
        "retry_after": answer.get("retry_after"),
    }


def _calls(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each API call, its invocation paired with its completion (a call never completed is unanswered)."""
    invoked: dict[int, dict[str, Any]] = {}
    calls: list[dict[str, Any]] = []
    for entry in history:
        if entry.get("f") not in API_OPERATIONS:
            continue
        if entry["type"] == INVOKE:
            invoked[entry["index"]] = entry
        elif entry["type"] in (OK, FAIL, INFO) and entry.get("op") in invoked:
            calls.append(_call(invoked.pop(entry["op"]), entry))
    calls += [_call(start, None) for start in invoked.values()]  # the run ended while it waited
    return sorted(calls, key=lambda c: c["invoked_at"])


def _in_flight(flood: list[dict[str, Any]], at: float) -> int:
    return sum(
        1 for c in flood if c["invoked_at"] <= at and (c["answered_at"] is None or c["answered_at"] > at)
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def check(
    history: list[dict[str, Any]],
    isolation: dict[str, Any] | None,
    windows: list[dict[str, Any]] | None = None,
) -> CheckResult:
    """`isolation`: the manifest's `isolation` entry (latency bound, noisy clients, the limits);
    `windows`: the nemesis's faults on the API's path (`disruptions`), whose calls are excused."""
    result = CheckResult(ID, TITLE, True)
    isolation = isolation or {}
    windows = windows or []
    every_call = _calls(history)
    calls = [c for c in every_call if c["error"] != INTERRUPTED]
    if len(calls) < len(every_call):
        result.counts["interrupted_by_load_stop"] = len(every_call) - len(calls)
    flood = [c for c in calls if c["flood"]]
    result.counts["flood_requests"] = len(flood)
    if not flood:
        if isolation.get("noisy_clients"):
            result.valid = "unknown"
            result.note = "the scenario has a noisy tenant, but the history holds none of its requests"
        else:
            result.note = "not exercised: no shop flooded in this run (scenario noisy_neighbour does)"
        return result
    bound_s = float(isolation.get("latency_bound_s", 2.0))
    flooding_shops = {c["shop"] for c in flood}
    start = flood[0]["invoked_at"]
    end = max((c["answered_at"] or c["invoked_at"]) for c in flood)
    # Every other shop's call that overlapped the flood: invoked during it, or answered during it.
    others = [
        c
        for c in calls
        if c["shop"] not in flooding_shops
        and c["invoked_at"] <= end
        and (c["answered_at"] is None or c["answered_at"] >= start)
    ]
    result.counts.update(
        {
            "flood_s": _ms(end - start) // 1000,
            "flood_refused_429": sum(1 for c in flood if c["status"] == 429),
            "others_during_flood": len(others),
            "latency_bound_ms": _ms(bound_s),
        }
    )
    latencies = sorted(c["answered_at"] - c["invoked_at"] for c in others if c["answered_at"] is not None)
    if latencies:
        result.counts["others_p50_ms"] = _ms(latencies[len(latencies) // 2])
        result.counts["others_p99_ms"] = _ms(
            latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
        )
        result.counts["others_max_ms"] = _ms(latencies[-1])
    starved = 0
    excused = 0
    for call in others:
        took = None if call["answered_at"] is None else call["answered_at"] - call["invoked_at"]
        why = None
        refused = call["problem"] == OVERLOADED
        late = call["kind"] == INFO or refused or (took is not None and took > bound_s)
        if late and windows and _overlaps(call, windows, RECOVERY_S):
            excused += 1
            continue
        if call["kind"] == INFO:
            why = f"answered {call['status']}" if call["status"] else f"no answer ({call['error']})"
        elif refused:
            why = "refused 503 overloaded: the API process was full while the flood was served"
        elif took is not None and took > bound_s:
            why = f"took {_ms(took)} ms, over the bound of {_ms(bound_s)} ms"
        if why is None:
            continue
        starved += 1
        result.witness(
            {
                "kind": "starved",
                "why": why,
                "history_index": call["index"],
                "history_time": call["invoked_at"],
                "shop": call["shop"],
                "f": call["f"],
                "status": call["status"],
                "took_ms": None if took is None else _ms(took),
                "flood_in_flight": _in_flight(flood, call["invoked_at"]),
            }
        )
    result.counts["others_starved"] = starved
    if windows:
        result.counts["nemesis_windows"] = len(windows)
        result.counts["others_excused_by_nemesis"] = excused
    unanswered = [c for c in flood if c["kind"] == INFO and not _overlaps(c, windows, RECOVERY_S)]
    if windows:
        result.counts["flood_excused_by_nemesis"] = sum(1 for c in flood if c["kind"] == INFO) - len(
            unanswered
        )
    for call in unanswered:
        result.witness(
            {
                "kind": "flood_unanswered",
                "why": f"answered {call['status']}" if call["status"] else f"no answer ({call['error']})",
                "history_index": call["index"],
                "history_time": call["invoked_at"],
                "shop": call["shop"],
                "f": call["f"],
                "route_class": call["route_class"],
            }
        )
    result.counts["flood_unanswered"] = len(unanswered)
    bad_retry = [c for c in flood if c["status"] == 429 and not _whole_seconds_at_least_one(c["retry_after"])]
    for call in bad_retry:
        result.witness(
            {
                "kind": "no_retry_after",
                "why": f"429 with Retry-After {call['retry_after']!r}",
                "history_index": call["index"],
                "f": call["f"],
                "route_class": call["route_class"],
            }
        )
    result.counts["no_retry_after"] = len(bad_retry)
    redis_down = [w for w in windows if w["action"] == "restart_redis" or w["target"] == "redis"]
    budgeted = [c for c in flood if not _overlaps(c, redis_down, RECOVERY_S)]
    result.counts["over_limit"] = _over_limit(result, budgeted, isolation.get("rate_limits") or {})
    if starved or unanswered or bad_retry or result.counts["over_limit"]:
        result.valid = False
    elif not others:
        result.valid = "unknown"
        result.note = "the flood overlapped no other shop's API request: nothing to judge"
    return result


def _whole_seconds_at_least_one(value: Any) -> bool:
    return isinstance(value, str) and value.isdigit() and int(value) >= 1


def _over_limit(result: CheckResult, flood: list[dict[str, Any]], limits: dict[str, Any]) -> int:
    """Route classes in which, in some window, more of the flood was served than GCRA admits in it."""
    classes = 0
    by_class: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for call in flood:
        if call["kind"] != INFO and call["status"] != 429 and call["problem"] != OVERLOADED:
            by_class[(call["shop"], call["route_class"])].append(call)
    for (shop, route_class), served in sorted(by_class.items()):
        limit = limits.get(route_class)
        if limit:
            found = _first_excess(served, int(limit["count"]), float(limit["period_s"]), int(limit["burst"]))
            if found is not None:
                classes += 1
                count, window, opens, admissible = found
                result.witness(
                    {
                        "kind": "over_limit",
                        "why": f"{count} {route_class} requests served within {window:g} s from "
                        f"t={opens:.1f} s; the budget ({limit['count']} per {limit['period_s']:g} s, "
                        f"burst {limit['burst']}) admits {admissible} in that time",
                        "shop": shop,
                        "route_class": route_class,
                        "served": count,
                        "admissible": admissible,
                    }
                )
    return classes


def _first_excess(
    served: list[dict[str, Any]], count: int, period_s: float, burst: int
) -> tuple[int, float, float, int] | None:
    """The first window (5 s, then one period) holding more served requests than the burst plus one per
    interval admits: (served, window, where it opens, admissible); None when every window holds."""
    interval = period_s / count
    for window in sorted({min(5.0, period_s), period_s}):
        admissible = burst + math.floor(window / interval)
        for i, first in enumerate(served):
            opens, closes = first["invoked_at"], first["invoked_at"] + window
            inside = 0
            for call in served[i:]:
                if call["invoked_at"] > closes:
                    break
                if call["answered_at"] is not None and call["answered_at"] <= closes:
                    inside += 1
            if inside > admissible + SLACK:
                return inside, window, opens, admissible
    return None
