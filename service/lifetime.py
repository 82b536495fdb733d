"""Child processes that never outlive the process that started them, however it dies.

A command that starts helpers (the embedded `redis-server`, the processes of `smslab up` and of a lab
run) stops them when it exits normally, on Ctrl-C, or on SIGTERM (`exit_on_sigterm`). That leaves a
SIGKILL, or a crash: then nothing of the parent runs. So on Linux each child is started through a tiny
launcher (`python -m service.lifetime PARENT_PID COMMAND...`) that asks the kernel to send it SIGKILL the
moment its parent ends (`prctl(PR_SET_PDEATHSIG)`, which survives the `exec` into the real command), and
exits at once if the parent is already gone. (A launcher rather than `preexec_fn`, which is unsafe in a
process with threads, as the lab harness is.) The kernel watches the thread that started the child, so
parents start children from a thread that lives as long as they do (the main or the event loop's).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

_PR_SET_PDEATHSIG = 1


def bound_to_this_process(argv: list[str]) -> list[str]:
    """`argv`, started so that it dies with this process (unchanged where the kernel cannot do it)."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-m", "service.lifetime", str(os.getpid()), *argv]


def exit_on_sigterm() -> None:
    """Make SIGTERM behave as Ctrl-C does (KeyboardInterrupt), so `finally:` and `with` clean up."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _launch(parent: int, argv: list[str]) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)
    os.execvp(argv[0], argv)  # noqa: S606 - the caller's own argv, as Popen would run it


if __name__ == "__main__":
    _launch(int(sys.argv[1]), sys.argv[2:])
