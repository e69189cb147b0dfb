"""Qualcomm's Hexagon NPU through ExecuTorch's QNN backend: schemes, chips, SDK check, lowering.

The schemes follow ExecuTorch's maintained static-Llama recipes (`examples/qualcomm/oss_scripts/llama/
static_llm_quant_recipe.py`) with `QnnQuantizer`'s `QuantRecipe`: min-max observed activations, per-tensor,
and per-channel or per-block weights on the block linears:
- 16a4w: Llama 3.2 1B's recipe: 16-bit activations, 4-bit weights in blocks of 32 (LPBQ), and its 8-bit
  exceptions: the classifier and the first four layers' down projections at 16a8w, the KV cache 8-bit.
- 16a8w: SmolLM2's recipe: 16-bit activations, 8-bit per-channel weights.
- 8a8w: 8-bit activations, 8-bit per-channel weights.
ExecuTorch's flow also rewrites linears as 1x1 convolutions for the HTP; the arithmetic is the same, so the
simulation here keeps linears. The quantizer imports without the SDK; lowering needs QAIRT's libraries.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from handheld.export.backends.npu import NpuScheme, NpuSupport

QAIRT_VERSION = "2.37.0.250724"  # the SDK ExecuTorch 1.5.1 pins (its download_qnn_sdk.py)
SDK_VARIABLE = "QNN_SDK_ROOT"
HTP_LIBRARY = Path("lib") / "x86_64-linux-clang" / "libQnnHtp.so"
SOCS = {
    "SM8550": "Snapdragon 8 Gen 2 (HTP v73)",
    "SM8650": "Snapdragon 8 Gen 3 (HTP v75)",
    "SM8750": "Snapdragon 8 Elite (HTP v79)",
}
BLOCK_SIZE = 32  # LPBQ block along a linear's input
BLOCK_LINEARS = r"^layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])$"
# Llama 3.2 1B's 8-bit exceptions: the classifier, and the down projections of the first four layers.
SENSITIVE_16A8W = (r"^output$", r"^layers\.[0-3]\.feed_forward\.w2$")


@contextlib.contextmanager
def no_sdk_download() -> Iterator[None]:
    """ExecuTorch sets the SDK up when a quantizer or a lowering starts, downloading QAIRT when QNN_SDK_ROOT is
    unset. An empty QNN_SDK_ROOT means "the caller supplies the SDK" to it: nothing is downloaded."""
    if SDK_VARIABLE in os.environ:
        yield
        return
    os.environ[SDK_VARIABLE] = ""
    try:
        yield
    finally:
        os.environ.pop(SDK_VARIABLE, None)


def missing_sdk() -> str | None:
    root = os.environ.get(SDK_VARIABLE)
    wanted = f"Qualcomm's QAIRT (QNN) SDK {QAIRT_VERSION}, the version ExecuTorch 1.5.1 pins"
    if not root:
        return f"{wanted}: ${SDK_VARIABLE} is not set"
    if not (Path(root) / HTP_LIBRARY).is_file():
        return f"{wanted}: ${SDK_VARIABLE}={root} has no {HTP_LIBRARY}"
    return None


def _recipe(default_dtype: str, block_linears: bool, sensitive: tuple[str, ...], kv_8bit: bool):
    import torch
    from executorch.backends.qualcomm.quantizer.quant_recipe import QuantGranularity, QuantRecipe
    from executorch.backends.qualcomm.quantizer.quantizer import QuantDtype
    from torchao.quantization.pt2e import MinMaxObserver

    dtype = getattr(QuantDtype, default_dtype)
    recipe = QuantRecipe(dtype, False, act_observer=MinMaxObserver, granularity=QuantGranularity.PER_TENSOR)
    if block_linears:
        recipe.add_regex({BLOCK_LINEARS}, dtype, False, act_observer=MinMaxObserver,
                         granularity=QuantGranularity.PER_BLOCK, extra_kwargs={"block_size": (1, BLOCK_SIZE)})
    else:
        recipe.add_node_target({torch.ops.aten.linear.default}, dtype, False, act_observer=MinMaxObserver,
                               granularity=QuantGranularity.PER_CHANNEL)
    if sensitive:
        # Priority 2: these win over the block linears' rule, as in ExecuTorch's recipes.
        recipe.add_regex(set(sensitive), QuantDtype.use_16a8w, False, act_observer=MinMaxObserver,
                         granularity=QuantGranularity.PER_CHANNEL, priority=2)
    if kv_8bit:
        recipe.custom_quant_annotations.append(_kv_cache_8bit)
    return recipe


def _kv_cache_8bit(graph_module) -> None:
    """The cache operand of both attention matmuls at 8 bits, as ExecuTorch's `annotate_kv_8bit` does for its
    static Llama (whose cache is an input, where handheld's is a buffer the matmul reads)."""
    import torch
    from executorch.backends.qualcomm.quantizer.qconfig import get_16a8w_qnn_ptq_config
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    cache_spec = get_16a8w_qnn_ptq_config().weight  # 8-bit, per tensor
    for node in graph_module.graph.nodes:
        if node.target == torch.ops.aten.bmm.default and Q_ANNOTATION_KEY in node.meta:
            annotation = node.meta[Q_ANNOTATION_KEY]
            if node.args[1] in annotation.input_qspec_map:
                annotation.input_qspec_map[node.args[1]] = cache_spec


def _quantizer(default_dtype: str, block_linears: bool = False, sensitive: tuple[str, ...] = (), kv_8bit: bool = False):
    def build(chip: str) -> Any:
        from executorch.backends.qualcomm.quantizer.quantizer import QnnQuantizer
        from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset

        with no_sdk_download():
            quantizer = QnnQuantizer(soc_model=getattr(QcomChipset, chip))
        quantizer.set_recipe(_recipe(default_dtype, block_linears, sensitive, kv_8bit))
        return quantizer

    return build


def lower(module: Any, inputs: tuple, chip: str, constant_methods: dict[str, Any]) -> Any:
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
    from executorch.backends.qualcomm.utils.utils import (generate_htp_compiler_spec,
                                                          generate_qnn_executorch_compiler_spec,
                                                          to_edge_transform_and_lower_to_qnn)

    specs = generate_qnn_executorch_compiler_spec(soc_model=getattr(QcomChipset, chip),
                                                  backend_options=generate_htp_compiler_spec(use_fp16=False))
    with no_sdk_download():  # missing_sdk() was checked first; this only keeps ExecuTorch from looking again
        return to_edge_transform_and_lower_to_qnn(module, inputs, specs, constant_methods=constant_methods)


SCHEMES = {
    "16a4w": NpuScheme("16a4w", "16-bit activations, 4-bit block-32 weights (LPBQ); classifier, first four down "
                       "projections 16a8w; 8-bit KV cache (ExecuTorch's Llama 3.2 1B recipe)",
                       _quantizer("use_16a4w_block", block_linears=True, sensitive=SENSITIVE_16A8W, kv_8bit=True)),
    "16a8w": NpuScheme("16a8w", "16-bit activations, 8-bit per-channel weights (ExecuTorch's SmolLM2 recipe)",
                       _quantizer("use_16a8w")),
    "8a8w": NpuScheme("8a8w", "8-bit activations, 8-bit per-channel weights", _quantizer("use_8a8w")),
}

SUPPORT = NpuSupport(schemes=SCHEMES, chips=SOCS, default_chip="SM8650", missing_sdk=missing_sdk, lower=lower)
