"""Child processes end with their parent: a SIGTERM or Ctrl-C to a long job (the demo) leaves nothing running.

The parent turns SIGTERM into SystemExit after terminating its children (export workers, bench runs), so its
own `with` blocks clean up. Each worker asks the kernel for a SIGTERM when its parent dies (Linux
PR_SET_PDEATHSIG: covers a SIGKILLed parent too) and turns SIGTERM into `Terminated`, which unwinds the job
(an export it was writing leaves no half-written file: outputs go to a temporary name and are renamed) and then
ends the worker: a pool's worker loop would otherwise catch it and wait for work that never comes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def children_of(pid: int) -> list[int]:
    """Live child pids of `pid` (Linux /proc; elsewhere, none found)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command name (which may hold spaces): state, ppid, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _end_children_then_exit(signum, frame) -> None:
    for pid in children_of(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def children_end_with_me():
    """While inside: a SIGTERM to this process ends its children first, then this process (exit 143)."""
    previous = signal.signal(signal.SIGTERM, _end_children_then_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM in a worker process."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def exits_when_terminated(job):
    """A pool job that, once unwound by `Terminated`, ends its worker instead of returning to the pool's loop."""
    @functools.wraps(job)
    def run(*args, **kwargs):
        try:
            return job(*args, **kwargs)
        except Terminated:
            os._exit(128 + signal.SIGTERM)
    return run


def end_with_parent() -> None:
    """For a worker process (a pool initializer): SIGTERM raises `Terminated`, and the parent's death sends it."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the kernel could be asked to tell us
        os._exit(128 + signal.SIGTERM)
