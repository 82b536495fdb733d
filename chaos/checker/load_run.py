"""A load run's own judgement beside the invariants: the gate, the load summary, and what the load must
have done for its verdict to count.

Only a run whose run.json has a `load` entry (`smslab load`) gets one. The gate is judged again here from
`load_stats.csv` and the scenario as run, by the rule the locustfile's `quitting` listener applied
(`chaos/load_gate.py`), so `smslab check` on a copied folder reaches the same answer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.checker.coverage import load_scenario_as_run
from chaos.checker.observations import DeliveryTally
from chaos.history import OK
from chaos.load_gate import STATS_CSV, Thresholds, evaluate_folder, rows_from_csv, summary

# Locust's exit codes: 0 the gate passed, 1 it failed; anything else, Locust itself did not finish.
FINISHED = (0, 1)
# Where the webhook storm posts, by provider: its deliveries count beside the providers' own (metrics).
# Where each Locust process writes its storm's post counts (beside its history), as it stops.
HISTORY_DIR = "load_history"
STORM_PREFIX = "storm-"
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


def storm_deliveries(run_dir: Path) -> DeliveryTally | None:
    """The webhook storm's posts by provider, which the service counts in its metrics beside the
    providers' own deliveries: each Locust process's exact count (`load_history/storm-<pid>.json`,
    written by the locustfile as it stops: answered 2xx, and no answer at all). Without those files (a
    Locust process killed before it wrote its own), Locust's successes on the webhook routes, all as
    leeway: an upper bound, not a count."""
    files = sorted((run_dir / HISTORY_DIR).glob(f"{STORM_PREFIX}*.json"))
    if files:
        answered: Counter[str] = Counter()
        unanswered: Counter[str] = Counter()
        for path in files:
            try:
                posts = json.loads(path.read_text()).get("posts", {})
            except (OSError, ValueError):
                continue
            for provider, outcomes in posts.items():
                answered[provider] += int(outcomes.get("2xx", 0))
                unanswered[provider] += int(outcomes.get("no_answer", 0))
        return DeliveryTally(dict(answered), dict(unanswered))
    path = run_dir / STATS_CSV
    if not path.exists():
        return None
    rows, _total = rows_from_csv(path)
    by_route = {row.name: row.requests - row.failures for row in rows}
    return DeliveryTally(
        {}, {provider: by_route[route] for provider, route in STORM_ROUTES.items() if by_route.get(route)}
    )
