"""What a process is doing, on request: SIGUSR1 writes every thread's stack, SIGUSR2 every asyncio task's,
to stderr (in the lab, the process's log).

The lab sends it to a process that did not stop within its grace period, just before it SIGKILLs it: a
stop that hangs (a quick run's stop phase took 10 s instead of one, once in six runs, with no log line
saying why) then leaves the place it hung in the log. The thread stacks come from `faulthandler`, in C,
so they are written even when the event loop is blocked in a synchronous call, or already closed (a hang
in the interpreter's teardown); the tasks' stacks (where each coroutine is awaiting) only while the loop
is free to run the handler. Two signals, because closing a loop resets the signals it handled to their
defaults, which would take SIGUSR1 from faulthandler too. Stacks name code, never data.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys

THREADS = signal.SIGUSR1  # every thread's stack (faulthandler, in C)
TASKS = signal.SIGUSR2  # every asyncio task's (in the loop)


def dump_tasks() -> None:
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio task(s), where each is awaiting ---", file=sys.stderr)
    for task in tasks:
        print(f"task {task.get_name()}:", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


def install() -> None:
    """Call from inside the running event loop, once."""
    faulthandler.register(THREADS, file=sys.stderr, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(TASKS, dump_tasks)
