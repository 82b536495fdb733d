"""Check a finished run from its folder alone: every invariant, a verdict, `verdict.json`.

Evidence, and nothing else: the simulator's ledgers (`simulator/`), the database as saved at the end of
the run (`database/`), the history (`history.jsonl`), every process's log (`logs/`), and the run's
manifest (`run.json`: quiescence, the lab's secrets to look for in the logs). Never the service's own
counters. A checker that throws gives "unknown", never "valid".
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import operator
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from chaos.checker import (
    i1_single_acceptance,
    i2_nothing_stuck,
    i3_debits_match,
    i4_credits_conserved,
    i5_payments_once,
    i6_one_enqueue,
    i7_delivery_state,
    i8_no_pii,
    i9_tenant_isolation,
    load_run,
)
from chaos.checker.causes import Causes, concerned
from chaos.checker.causes import attach as attach_causes
from chaos.checker.coverage import assess
from chaos.checker.evidence import (
    acceptances_with,
    iter_delivery_attempts,
    iter_delivery_outcomes,
    iter_reports,
    load_accepted_sends,
    load_stripe_truth,
)
from chaos.checker.observations import DeliveryTally, metrics_against_truth
from chaos.checker.result import CheckResult, compose, guarded
from chaos.checker.snapshot_io import iter_saved_rows, load_personal_data, load_saved_snapshot
from chaos.history import read_history
from simulator.delivery import DELIVERIES_LEDGER

T = TypeVar("T")
_PHONE = operator.attrgetter("to")
RECIPIENT_COLUMNS_FOR_I7_ONLY = {"recipients": ("phone_e164", "provider_message_id")}

VERDICT = "verdict.json"
MANIFEST = "run.json"


# Violations that work still in flight explains, when a run did not settle: a debit not yet written, a
# delivery report not yet applied. Anything else (a double send, an overcharge, a wrong final state)
# no amount of waiting would fix. Per invariant: (its shortfall, the counts no waiting explains, the
# settle phase's counts of unfinished work that could still bring what is missing). A debit follows its
# send, so with no recipient left unsettled a missing debit is lost, whatever webhooks were still queued
# and whichever campaign was still to be marked completed (a seed-profile run with every recipient sent
# and 1,218 reports queued read I3 unknown). With the debit in the send's transaction there is no moment
# between the two; without it (safeguard 5 off), only a batch's last milliseconds at the very end.
IN_FLIGHT_EXPLAINS = {
    "I3": ("campaigns_undercharged", ("campaigns_overcharged",), ("still_unsettled_recipients",)),
    "I7": (
        "regressed_or_missing_final",  # and final_state_no_delivery_brought: its delivery still queued
        ("wrong_final_state",),
        ("still_unsettled_recipients", "deliveries_pending", "delivery_reports_parked"),
    ),
}


def undecidable_when_unsettled(result: CheckResult, quiescence: dict[str, Any]) -> None:
    """In a run that did not settle (I2 says so), a shortfall that may be in flight is unknown."""
    if result.valid is not False or result.id not in IN_FLIGHT_EXPLAINS:
        return
    _shortfall, decisive, could_bring = IN_FLIGHT_EXPLAINS[result.id]
    if any(result.counts.get(name, 0) for name in decisive):
        return
    # a count the settle phase did not record (an older run folder) might have been anything
    if not any(quiescence.get(name, 1) for name in could_bring):
        return
    result.valid = "unknown"
    result.note = "the run did not settle (see I2): what is missing here may still have been in flight"


# A run folder bigger than this is checked by three processes: this one (acceptances, the database,
# I1-I4, I6, I8), one scanning every log line, and one checking what rests on the webhook delivery
# ledger (I5, I7). A million-message run writes about 1.4 GB, half of it logs and deliveries.
PARALLEL_BYTES = 64 * 1024 * 1024


def _folder_bytes(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.exists())


@contextmanager
def cyclic_collector_paused() -> Iterator[None]:
    """CPython's cyclic collector off for the length of a check: the checker allocates millions of small
    objects that never form cycles (decoded rows, the tuples of its sets), which the collector, run every
    700 allocations, walks again and again. Measured on a million-message folder: about 5% of the
    checking process's CPU; no difference in the helpers. Whatever was enabled is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _collector_paused(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a helper process, with the collector paused there too (a spawned helper does
    not inherit this process's setting)."""
    with cyclic_collector_paused():
        return function(*args)


def _in_background(
    pool: ProcessPoolExecutor | None, function: Callable[..., T], *args: Any
) -> Callable[[], T]:
    """Start `function(*args)` in the pool (or, without one, when asked); the returned call waits for it."""
    if pool is None:
        return lambda: function(*args)
    future = pool.submit(_collector_paused, function, *args)
    return future.result


def _process_context() -> multiprocessing.context.BaseContext:
    """Fork when this process has no other thread (nothing can be forked holding a lock): the workers
    start at once with every module already imported (a spawned one spends a second importing); spawn
    otherwise (the harness calls this with its thread pool alive)."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


# The saved tables I5 reads (the delivery process loads no others; I7 reads the recipients a block at a
# time, so that this process never holds them all).
PAYMENT_TABLES = ("ledger", "billing", "refunds")


def check_delivery_invariants(
    simulator_dir: Path, database_dir: Path
) -> tuple[CheckResult, CheckResult, int, DeliveryTally]:
    """I5 and I7, from the webhook delivery ledger and the provider ledgers; the number of deliveries and
    their tally by provider. The ledger is read a block at a time and only what the invariants need is
    kept: what was heard of each message, and the tally (I5 asks it whether Stripe was ever answered)."""
    snapshot = load_saved_snapshot(database_dir, PAYMENT_TABLES)
    heard = i7_delivery_state.HeardReports()
    tally = DeliveryTally()
    count = 0
    for block in iter_delivery_outcomes(simulator_dir):
        count += len(block)
        heard.add(block)
        tally.add(block)
    payments = guarded(
        i5_payments_once.ID,
        i5_payments_once.TITLE,
        lambda: i5_payments_once.check(
            load_stripe_truth(simulator_dir), snapshot, tally.answered.get("stripe", 0) > 0
        ),
    )
    states = guarded(
        i7_delivery_state.ID,
        i7_delivery_state.TITLE,
        lambda: i7_delivery_state.check_heard(
            heard,
            lambda: iter_reports(simulator_dir),
            lambda messages: i7_delivery_state.acknowledged_events(
                iter_delivery_attempts(simulator_dir), messages
            ),
            iter_saved_rows(database_dir, "recipients"),
        ),
    )
    return payments, states, count, tally


def missing_evidence(run_dir: Path, manifest: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """What a verdict needs and the folder lacks: then nothing can be judged valid (a run that never
    started leaves empty ledgers, and empty evidence contradicts no invariant)."""
    missing = []
    if not manifest:
        missing.append(f"no {MANIFEST}: the run did not get past its set-up")
    elif "quiescence" not in manifest:
        missing.append(f"{MANIFEST} has no settle result: the run did not get as far as settling")
    if not history:
        missing.append("the history is empty: no client operation was recorded")
    if not (run_dir / "database" / "campaigns.jsonl").exists():
        missing.append("no saved database (database/*.jsonl): the snapshot was never taken")
    return missing


def check_run(run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    manifest: dict[str, Any] = (
        json.loads((run_dir / MANIFEST).read_text()) if (run_dir / MANIFEST).exists() else {}
    )
    simulator_dir = run_dir / "simulator"
    database_dir = run_dir / "database"
    # Every process's log, the lab's own redis-server's too (it is a process of the run as well).
    logs = sorted((run_dir / "logs").glob("*.log")) + sorted((run_dir / "redis").glob("*.log"))
    big = _folder_bytes([*logs, simulator_dir / DELIVERIES_LEDGER]) > PARALLEL_BYTES
    pool = ProcessPoolExecutor(max_workers=2, mp_context=_process_context()) if big else None
    try:
        log_scan = _in_background(
            pool,
            i8_no_pii.scan_log_files,
            logs,
            list(manifest.get("secrets", [])),
            list(manifest.get("names", [])),
        )
        delivery_invariants = _in_background(pool, check_delivery_invariants, simulator_dir, database_dir)
        with cyclic_collector_paused():
            return _check(run_dir, manifest, started, logs, log_scan, delivery_invariants)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _check(
    run_dir: Path,
    manifest: dict[str, Any],
    started: float,
    logs: list[Path],
    log_scan: Callable[[], i8_no_pii.LogScan],
    delivery_invariants: Callable[[], tuple[CheckResult, CheckResult, int, DeliveryTally]],
) -> dict[str, Any]:
    simulator_dir = run_dir / "simulator"
    database_dir = run_dir / "database"
    acceptances = load_accepted_sends(simulator_dir)
    # Recipients' phones and message ids are read by I7 alone, in the delivery helper, which reads the
    # table itself: about 120 MB a million rows not held here.
    snapshot = load_saved_snapshot(database_dir, leave_out=RECIPIENT_COLUMNS_FOR_I7_ONLY)
    history = read_history(run_dir / "history.jsonl")
    # read by I8 only if its scan found a bare digit run to compare
    phones = chain(map(_PHONE, acceptances), manifest.get("phones", []))

    def nothing_stuck() -> CheckResult:
        result = i2_nothing_stuck.check(snapshot)
        quiescence = manifest.get("quiescence", {})
        result.counts["quiescence_bound_s"] = quiescence.get("bound_s", 0)
        result.counts["settled_after_s"] = quiescence.get("settled_after_s", -1)
        if quiescence and not quiescence.get("reached", False):
            result.note = f"not settled within the scenario's bound of {quiescence.get('bound_s')} s"
        return result

    results = [
        guarded(
            i1_single_acceptance.ID,
            i1_single_acceptance.TITLE,
            lambda: i1_single_acceptance.check(
                acceptances, snapshot, lambda references: acceptances_with(simulator_dir, references)
            ),
        ),
        guarded(i2_nothing_stuck.ID, i2_nothing_stuck.TITLE, nothing_stuck),
        guarded(
            i3_debits_match.ID, i3_debits_match.TITLE, lambda: i3_debits_match.check(acceptances, snapshot)
        ),
        guarded(
            i4_credits_conserved.ID, i4_credits_conserved.TITLE, lambda: i4_credits_conserved.check(snapshot)
        ),
        guarded(i6_one_enqueue.ID, i6_one_enqueue.TITLE, lambda: i6_one_enqueue.check(history)),
        guarded(
            i8_no_pii.ID,
            i8_no_pii.TITLE,
            lambda: i8_no_pii.check(log_scan(), phones, history, load_personal_data(database_dir)),
        ),
        guarded(
            i9_tenant_isolation.ID,
            i9_tenant_isolation.TITLE,
            lambda: i9_tenant_isolation.check(
                history,
                manifest.get("isolation"),
                i9_tenant_isolation.disruptions(run_dir, manifest),
            ),
        ),
    ]
    payments, states, delivery_attempts, tally = delivery_invariants()
    results[4:4] = [payments]
    results[6:6] = [states]
    quiescence = manifest.get("quiescence", {})
    if quiescence.get("reached") is False:
        for result in results:
            undecidable_when_unsettled(result, quiescence)
    missing = missing_evidence(run_dir, manifest, history)
    for result in results:
        if missing and result.valid is True:
            result.valid = "unknown"
            result.note = "no evidence to judge by: " + "; ".join(missing)
    if any(result.valid is not True for result in results):
        wanted = concerned(results, history)
        deliveries = [d for block in iter_delivery_attempts(simulator_dir) for d in block if wanted(d)]
        attach_causes(results, Causes.of(run_dir, manifest, deliveries, history))
    coverage = assess(run_dir, manifest, history, snapshot, acceptances)
    if load_run.is_load_run(manifest):
        coverage["shortfalls"].extend(load_run.shortfalls(run_dir, manifest, history))
    valid = compose(results)
    # an invariant that had nothing to judge says so itself (its note); evidence missing says it for all
    undecided = [f"{r.id}: {r.note}" for r in results if r.valid == "unknown" and r.note and not missing]
    unknown_because = [*missing, *undecided, *coverage["shortfalls"]] if valid is not False else []
    if valid is True and unknown_because:
        valid = "unknown"  # every invariant held, but the run did not do enough for that to count
    verdict = {
        "run": manifest.get("run_id", run_dir.name),
        "scenario": manifest.get("scenario"),
        "seed": manifest.get("seed"),
        "valid": valid,
        "unknown_because": unknown_because,
        "invariants": [r.as_dict() for r in results],
        "coverage": coverage,
        "observations": {
            "metrics": metrics_against_truth(
                run_dir, acceptances, snapshot, tally, load_run.storm_deliveries(run_dir)
            ),
            # processes killed because they did not stop on SIGTERM (their stacks are in their logs)
            "stops_overran": manifest.get("stops_overran", {}),
        },
        "evidence": {
            "acceptances": len(acceptances),
            "history_entries": len(history),
            "log_files": len(logs),
            "delivery_attempts": delivery_attempts,
        },
        "checked_in_s": round(time.perf_counter() - started, 3),
    }
    if load_run.is_load_run(manifest):  # `smslab load`: the gate beside the invariants
        verdict["load"] = load_run.judge(run_dir, manifest)
        verdict["passed"] = valid is True and verdict["load"]["gate"]["passed"]
    (run_dir / VERDICT).write_text(json.dumps(verdict, indent=1, default=str))
    return verdict
