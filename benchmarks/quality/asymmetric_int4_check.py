"""Does ExecuTorch's XNNPACK compute torchao's asymmetric int4 linear correctly? One 8da4w-style linear
(4-bit g32 weights, 8-bit dynamic activations), symmetric and asymmetric weight grids, each lowered to a `.pte`
and compared with its own eager model on the same input.

    python benchmarks/quality/asymmetric_int4_check.py

Writes benchmarks/results/asymmetric_int4_check.json. An asymmetric grid would hold Q4_1 GGUF weights (SmolLM2's)
exactly; if the program disagrees with its eager model, handheld cannot offer it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results" / "asymmetric_int4_check.json"


def program_error(mapping: str) -> dict:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    from handheld.export.program import count_ops
    from handheld.runtime_bindings.python.program import load_runtime_kernels

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128, bias=False)).eval()
    quantize_(model, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(32), weight_mapping_type=getattr(MappingType, mapping)))
    x = torch.randn(1, 3, 64)
    lowered = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()],
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False))
    counts = count_ops(lowered.exported_program().graph_module)
    load_runtime_kernels()
    out = Runtime.get().load_program(lowered.to_executorch().buffer).load_method("forward").execute([x])[0]
    with torch.no_grad():
        eager = model(x)
    return {"mapping": mapping, "delegated": not counts["portable"], "max_abs_error": float((out - eager).abs().max()),
            "output_range": float(eager.max() - eager.min()),
            "relative_error": float((out - eager).abs().max() / (eager.max() - eager.min()))}


def main() -> None:
    rows = [program_error(m) for m in ("SYMMETRIC", "ASYMMETRIC")]
    for row in rows:
        print(json.dumps(row))
    from handheld.measure.host import run_record

    report = {"made_by": run_record(), "check": __doc__.splitlines()[0], "rows": rows}
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
