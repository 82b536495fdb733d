"""How long `smslab report` takes on a run folder: the target is under 30 s for a 5-minute soak.

    python -m bench.report RUN_DIR            # e.g. a folder from `smslab run soak`
    python -m bench.report RUN_DIR --repeat 3

Times `chaos.notebooks.build_report` (the notebooks executed in a fresh kernel, the HTML exported, the
PNGs written) on a copy of the folder, so the folder's own report is left as it was, and prints what the
folder held (operations, acceptances, recipients, reconcile passes) beside the time. Exit 1 over 30 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chaos.notebooks import build_report
from chaos.runlab import RunFolder

TARGET_S = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    run = RunFolder.open(args.run_dir)
    print(
        f"{run.title}: {len(run.operations)} operations, {len(run.acceptances)} acceptances, "
        f"{len(run.recipients)} recipients, {len(run.reconcile_passes)} reconcile passes, "
        f"{len(run.faults)} faults"
    )
    times = []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeat):
            copy = Path(scratch) / run.path.name
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("report*", "metrics", "service.db"))
            started = time.monotonic()
            report = build_report(copy)
            times.append(time.monotonic() - started)
            print(
                f"report in {times[-1]:.1f} s: {len(report.figures)} figures, {report.html.stat().st_size} bytes"
            )
    worst = max(times)
    print(f"median {statistics.median(times):.1f} s, worst {worst:.1f} s (target under {TARGET_S:.0f} s)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
