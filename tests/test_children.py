"""A killed long job leaves nothing running and nothing half-written (handheld/cli/children.py, `handheld demo`)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from handheld.cli.children import children_of

LIVENESS_S = 120  # how long a dying process may take to be gone: a hang bound, not a speed claim

POOL_JOB = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from handheld.cli.children import children_end_with_me, end_with_parent, exits_when_terminated

@exits_when_terminated
def work(seconds):
    time.sleep(seconds)

if __name__ == "__main__":
    with children_end_with_me():
        with ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=end_with_parent) as pool:
            print("started", flush=True)
            list(pool.map(work, [600, 600]))
"""


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {LIVENESS_S} s"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _handles_sigterm(pid: int) -> bool:
    """The worker has run its initializer: it catches SIGTERM (/proc's SigCgt mask)."""
    try:
        caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def _workers(parent: subprocess.Popen) -> list[int]:
    return [pid for pid in children_of(parent.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _pool_parent(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(POOL_JOB)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "started"
    _wait_for(lambda: len(_workers(parent)) == 2 and all(map(_handles_sigterm, _workers(parent))), "the workers to start")
    return parent, _workers(parent)


def test_sigterm_ends_the_workers_then_the_parent(tmp_path):
    parent, workers = _pool_parent(tmp_path)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=LIVENESS_S) == 143
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to end")


def test_workers_end_even_when_the_parent_is_killed_outright(tmp_path):
    parent, workers = _pool_parent(tmp_path)
    parent.kill()  # SIGKILL: no handler runs in the parent; the kernel tells the workers (PR_SET_PDEATHSIG)
    parent.wait(timeout=LIVENESS_S)
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "the orphaned workers to end")


def test_sigterm_to_the_demo_leaves_no_export_worker_and_no_partial_file(tmp_path):
    out = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, "-m", "handheld", "demo", "--model", "proxy", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spawned = lambda: [pid for pid in children_of(demo.pid)  # noqa: E731
                       if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    try:
        _wait_for(lambda: len(spawned()) > 0 or demo.poll() is not None, "the demo's export workers")
        workers = spawned()
        assert workers, "the demo ended before exporting"
        time.sleep(2)  # let a worker get into its export
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=LIVENESS_S) == 143
        _wait_for(lambda: not any(_alive(pid) for pid in workers), "the export workers to end")
        assert not list(out.rglob("*.partial")), list(out.rglob("*.partial"))
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGKILL)
