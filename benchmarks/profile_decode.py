"""Where a program's decode time goes: ExecuTorch's own profiler (ETDump) over N decode steps, by operator.

    python benchmarks/profile_decode.py MODEL.pte [MORE.pte ...] [--steps 30] [--threads 2] [--json OUT]

Runs each program in its own process (they must not share one: their kernels would compete for cores),
prefills 8 tokens, decodes --steps tokens, and sums ETDump's per-event times: XNNPACK's operators inside
the delegate (e.g. "Fully Connected (NC, QD8, F32, QB4W)"), ExecuTorch's kernels outside it
("native_call_<op>"), and the delegate-call overhead. Prints milliseconds per decoded token by event.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFILL = 8


def event_group(name: str) -> str:
    """XNNPACK numbers operators within each delegate blob (" #3"): one group per operator kind."""
    return re.sub(r" #\d+$", "", name)


def profile_in_this_process(pte: str, steps: int, threads: int) -> dict:
    import torch
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (ExecuTorch's recipe needs its llama:: kernels)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(pte, enable_etdump=True)
    module.run_method("forward", (torch.arange(3, 3 + PREFILL).unsqueeze(0), torch.tensor([0])))
    start = time.perf_counter()
    for i in range(steps):
        module.run_method("forward", (torch.tensor([[5]]), torch.tensor([PREFILL + i])))
    wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "profile.etdp"
        module.write_etdump_result_to_file(str(etdump))
        inspector = Inspector(etdump_path=str(etdump))
    # ETDump holds every execute: the prefill is the first; keep the decode steps only.
    totals: collections.Counter[str] = collections.Counter()
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is not None:
                totals[event_group(event.name)] += sum(event.perf_data.raw[1:])  # [0] is the prefill's
    per_token = {name: ms / steps for name, ms in totals.most_common()}
    return {"pte": pte, "steps": steps, "threads": threads, "wall_ms_per_token": 1000 * wall / steps,
            "ms_per_token": per_token}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(profile_in_this_process(args.models[0], args.steps, args.threads)))
        return
    profiles = []
    for pte in args.models:
        done = subprocess.run([sys.executable, __file__, pte, "--steps", str(args.steps), "--threads", str(args.threads),
                               "--child"], capture_output=True, text=True, check=True)
        profile = json.loads(done.stdout.strip().splitlines()[-1])
        from handheld.measure.host import run_record

        profiles.append(profile | {"made_by": run_record()})
        print(f"\n{pte}: {profile['wall_ms_per_token']:.1f} ms per decoded token (wall), by event:")
        for name, ms in list(profile["ms_per_token"].items())[:15]:
            print(f"  {ms:8.2f} ms  {name}")
    if args.json:
        args.json.write_text(json.dumps(profiles, indent=2) + "\n")


if __name__ == "__main__":
    main()
