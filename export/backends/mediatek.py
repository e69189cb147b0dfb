"""MediaTek's APU through ExecuTorch's NeuroPilot backend: schemes, chips, SDK check, lowering.

`import executorch.backends.mediatek` (even its quantizer) needs NeuroPilot's `mtk_converter` and `mtk_neuron`
wheels, which MediaTek publishes for Python 3.10 only. So the schemes here are a reproduction of its
`NeuropilotQuantizer` (ExecuTorch 1.5.1, `backends/mediatek/quantizer/{qconfig,annotator}.py`, read as text)
with PyTorch's PT2E machinery, configured the same way:
- activations per tensor with min-max observers (eps 1e-6): int16 symmetric (A16) or int8 affine (A8), on
  the outputs of linears and element-wise ops, on float graph inputs, and on the embedding table;
- weights per output channel with min-max observers: int8 symmetric (W8 with A16), int8 affine (A8W8), or
  4-bit affine in [-8, 7] (W4);
- ops outside its annotator's list (softmax, rsqrt, reshapes, cache writes) stay float, as there; integer
  arithmetic (the positions' additions) is left alone, which its annotator does not check.
Its SDPA decomposition pass is not needed (handheld's model has no SDPA op). Its RMSNorm pattern
(x * rsqrt(mean(x*x) + eps), only the output quantized) is the NPU variant's single `rms_norm` op here, whose
output alone is quantized; the gain inside it is a float multiply there, part of the op here.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from typing import Any

from handheld.export.backends.npu import NpuScheme, NpuSupport

WHEELS = ("mtk_converter", "mtk_neuron")
PYTHON = (3, 10)
PLATFORMS = {
    "mt6989": "Dimensity 9300",
    "mt6991": "Dimensity 9400",
    "mt6993": "Dimensity 9500",
}
OUTPUT_OPS = (  # ops whose output its annotator quantizes (annotator.py's `annotate_output_qspec` list)
    "add.Scalar", "add.Tensor", "bmm.default", "div.Scalar", "div.Tensor", "gelu.default", "layer_norm.default",
    "matmul.default", "mul.Scalar", "mul.Tensor", "pow.Tensor_Scalar", "rsub.Scalar", "silu.default",
    "sub.Scalar", "sub.Tensor", "rms_norm.default",  # the last: its RMSNorm pattern, as one op
)
AFFINE_OPS = ("linear.default", "conv1d.default", "conv2d.default")


def missing_sdk() -> str | None:
    python = ".".join(map(str, sys.version_info[:2]))
    absent = [w for w in WHEELS if find_spec(w) is None]
    if sys.version_info[:2] != PYTHON:
        return (f"MediaTek's NeuroPilot wheels {' and '.join(WHEELS)}, published for Python 3.10 only "
                f"(this is Python {python}{'; not installed' if absent else ''})")
    if absent:
        return f"MediaTek's NeuroPilot wheel{'s' if len(absent) > 1 else ''} {' and '.join(absent)} (not installed)"
    return None


def _specs(precision: str) -> tuple[Any, Any]:
    """(activation spec, weight spec) as MediaTek's qconfig.py builds them for a precision."""
    import torch
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    a16 = precision.startswith("a16")
    act_dtype = torch.int16 if a16 else torch.int8
    activation = QuantizationSpec(
        dtype=act_dtype, quant_min=torch.iinfo(act_dtype).min, quant_max=torch.iinfo(act_dtype).max,
        qscheme=torch.per_tensor_symmetric if a16 else torch.per_tensor_affine,
        observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=1e-6),
    )
    four_bit = precision.endswith("w4")
    symmetric = a16 and not four_bit  # W8 with A16 is symmetric; A8W8 and every W4 are affine
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-8 if four_bit else -128, quant_max=7 if four_bit else 127,
        qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine, ch_axis=0,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=1e-6),
    )
    return activation, weight


def _annotate(graph_module, activation, weight) -> None:
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    aten = torch.ops.aten
    outputs = {getattr(getattr(aten, op.split(".")[0]), op.split(".")[1]) for op in OUTPUT_OPS}
    affine = {getattr(getattr(aten, op.split(".")[0]), op.split(".")[1]) for op in AFFINE_OPS}
    for node in graph_module.graph.nodes:
        value = node.meta.get("val")
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue  # integer arithmetic (positions, the mask's comparison) stays as it is
        if node.op == "placeholder":
            node.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=activation, _annotated=True)
        elif node.target in affine:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={node.args[1]: weight}, output_qspec=activation, _annotated=True)
        elif node.target in outputs:
            node.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=activation, _annotated=True)
        elif node.target == aten.embedding.default:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={node.args[0]: activation}, _annotated=True)


def _quantizer(precision: str):
    def build(chip: str) -> Any:
        from torchao.quantization.pt2e.quantizer import Quantizer

        class NeuropilotLikeQuantizer(Quantizer):
            def annotate(self, model):
                _annotate(model, *_specs(precision))
                return model

            def validate(self, model) -> None:
                pass

        return NeuropilotLikeQuantizer()

    return build


def lower(module: Any, inputs: tuple, chip: str, constant_methods: dict[str, Any]) -> Any:
    import torch
    from executorch.backends.mediatek import NeuropilotPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.exir.backend.compile_spec_schema import CompileSpec

    exported = torch.export.export(module, inputs)
    partitioner = NeuropilotPartitioner([CompileSpec("platform-config", chip.encode())])
    return to_edge_transform_and_lower(exported, partitioner=[partitioner], constant_methods=constant_methods,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))


SCHEMES = {
    "a16w4": NpuScheme("a16w4", "16-bit activations, 4-bit per-channel weights (NeuroPilot's A16W4, reproduced)",
                       _quantizer("a16w4")),
    "a16w8": NpuScheme("a16w8", "16-bit activations, 8-bit per-channel weights (NeuroPilot's A16W8, reproduced)",
                       _quantizer("a16w8")),
    "a8w8": NpuScheme("a8w8", "8-bit activations, 8-bit per-channel weights (NeuroPilot's A8W8, reproduced)",
                      _quantizer("a8w8")),
}

SUPPORT = NpuSupport(schemes=SCHEMES, chips=PLATFORMS, default_chip="mt6989", missing_sdk=missing_sdk, lower=lower)
