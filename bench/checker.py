"""Checker benchmark: `smslab check` on a run of one million messages, against the floor of just reading it.

    python -m bench.checker                      # 1,000,000 messages (a ~2 GB run folder in a temp dir)
    python -m bench.checker --messages 100000 --keep /tmp/run-100k
    python -m bench.checker --keep /tmp/run-1m   # again: the kept folder is checked, not written anew

A synthetic run folder (`chaos.checker.synthetic`: every file shaped as a real run writes it, two
delivery reports and two API log lines per message) is checked with every invariant, I8's scan of every
log line included. Printed, from one process in one run: the check's wall time and peak memory; the time
merely to read every byte of the folder, and to decode every JSON line of it, as floors; the check's
ratio to each. Then one double send is slipped into the provider's ledger and the folder is checked again:
the verdict must turn invalid, naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from chaos.checker.run import check_run
from chaos.checker.synthetic import write_synthetic_run


def folder_bytes(run_dir: Path) -> tuple[int, float]:
    """Read every byte, a megabyte at a time (the floor, and the page cache warmed for the check)."""
    started = time.perf_counter()
    total = 0
    for path in run_dir.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    total += len(block)
    return total, time.perf_counter() - started


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def decode_floor(run_dir: Path) -> float:
    """Decode every JSON-lines file of the folder into plain Python objects, and nothing else."""
    decoder = msgspec.json.Decoder()
    started = time.perf_counter()
    for path in run_dir.rglob("*.jsonl"):
        data = path.read_bytes()
        if data:
            decoder.decode_lines(data)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--campaign-size", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--keep", type=Path, help="write the run folder here and keep it")
    args = parser.parse_args()

    temp = None if args.keep else Path(tempfile.mkdtemp(prefix="bench-checker-"))
    run_dir = args.keep or (temp / "run")  # type: ignore[operator]
    try:
        if not (run_dir / "run.json").exists():
            print(f"writing a synthetic run of {args.messages:,} messages to {run_dir} ...", flush=True)
            started = time.perf_counter()
            write_synthetic_run(
                run_dir, args.messages, campaign_size=args.campaign_size, shops=4, batch_size=args.batch_size
            )
            print(f"  written in {time.perf_counter() - started:.1f} s", flush=True)
        size, read_s = folder_bytes(run_dir)
        # The check first: a process's peak only grows, and the decode floor below holds far more.
        before = os.times()
        verdict = check_run(run_dir)
        after = os.times()
        check_s = float(verdict["checked_in_s"])
        own_cpu = after.user + after.system - before.user - before.system
        # the helpers are waited for when check_run shuts its pool down, so their CPU is counted here
        helper_cpu = (
            after.children_user + after.children_system - before.children_user - before.children_system
        )
        main_mb, child_mb = peak_mb(resource.RUSAGE_SELF), peak_mb(resource.RUSAGE_CHILDREN)
        decode_s = decode_floor(run_dir)
        print(f"run folder: {size / 1e9:.2f} GB, {verdict['evidence']}")
        print(f"check_run:        {check_s:7.2f} s   verdict valid={verdict['valid']}  (target: < 5 s)")
        print(f"CPU:              {own_cpu:7.2f} s in this process, {helper_cpu:.2f} s in its helpers")
        print(f"read every byte:  {read_s:7.2f} s   check is {check_s / read_s:.1f}x this floor")
        print(f"decode every line:{decode_s:7.2f} s   check is {check_s / decode_s:.1f}x this floor")
        print(
            f"peak memory:      {main_mb:7.0f} MB in this process, {child_mb:.0f} MB in the largest of its "
            f"helper processes (target: < 1 GB)"
        )
        if verdict["valid"] is not True:
            print("FAIL: the synthetic run is clean; the verdict should be valid", file=sys.stderr)
            sys.exit(1)

        accepted = run_dir / "simulator" / "mitto_accepted.jsonl"
        with accepted.open("rb") as handle:
            first = json.loads(handle.readline())
        original = accepted.stat().st_size
        with accepted.open("ab") as handle:
            handle.write(json.dumps({**first, "message_id": "msg-double-send", "t": first["t"] + 9}).encode())
            handle.write(b"\n")
        try:
            broken = check_run(run_dir)
        finally:
            with accepted.open("r+b") as handle:
                handle.truncate(original)
        i1 = next(item for item in broken["invariants"] if item["id"] == "I1")
        print(
            f"with one double send slipped in: I1 valid={i1['valid']} "
            f"(extra acceptances {i1['counts']['extra_acceptances']}, first witness "
            f"{i1['witnesses'][0]['reference'] if i1['witnesses'] else None}), "
            f"checked in {broken['checked_in_s']:.2f} s"
        )
        if i1["valid"] is not False:
            print("FAIL: the double send went unnoticed", file=sys.stderr)
            sys.exit(1)
        check_run(run_dir)  # leave a correct verdict.json behind
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
