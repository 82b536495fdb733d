"""A load run's own judgement beside the invariants: the gate, the load summary, and what the load must
have done for its verdict to count.

Only a run whose run.json has a `load` entry (`smslab load`) gets one. The gate is judged again here from
`load_stats.csv` and the scenario as run, by the rule the locustfile's `quitting` listener applied
(`chaos/load_gate.py`), so `smslab check` on a copied folder reaches the same answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos.checker.coverage import load_scenario_as_run
from chaos.history import OK
from chaos.load_gate import STATS_CSV, Thresholds, evaluate_folder, rows_from_csv, summary

# Locust's exit codes: 0 the gate passed, 1 it failed; anything else, Locust itself did not finish.
FINISHED = (0, 1)
# Where the webhook storm posts, by provider: its deliveries count beside the providers' own (metrics).
STORM_ROUTES = {"mitto": "/webhooks/mitto/dlr", "stripe": "/webhooks/stripe", "shopify": "/webhooks/shopify"}


def is_load_run(manifest: dict[str, Any]) -> bool:
    return isinstance(manifest.get("load"), dict)


def judge(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """`verdict.json`'s `load`: the gate (thresholds, each check, why it failed) and the summary."""
    scenario = load_scenario_as_run(run_dir)
    thresholds = scenario.load.thresholds if scenario is not None else Thresholds()
    gate = evaluate_folder(run_dir, thresholds)
    return {
        "gate": gate.as_dict(),
        "thresholds": manifest["load"].get("thresholds"),
        "locust_exit_code": manifest["load"].get("locust_exit_code"),
        "summary": summary(run_dir),
    }


def shortfalls(run_dir: Path, manifest: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """A load run proves nothing if Locust did not run to its end or enqueued nothing."""
    found = []
    code = manifest["load"].get("locust_exit_code")
    if code not in FINISHED:
        found.append(f"Locust did not finish its run (exit code {code}; see locust.log)")
    if not (run_dir / STATS_CSV).exists():
        found.append(f"Locust wrote no {STATS_CSV}")
    if not any(e.get("f") == "enqueue" and e.get("type") == OK for e in history):
        found.append("the load enqueued no campaign (no enqueue answered 2xx in the history)")
    return found


def storm_deliveries(run_dir: Path) -> dict[str, int]:
    """The webhook storm's answered posts by provider (Locust's successes on the webhook routes): the
    service counts them in its metrics too, beside the providers' own deliveries."""
    path = run_dir / STATS_CSV
    if not path.exists():
        return {}
    rows, _total = rows_from_csv(path)
    by_route = {row.name: row.requests - row.failures for row in rows}
    return {provider: by_route[route] for provider, route in STORM_ROUTES.items() if by_route.get(route)}
