"""Floor 2 (`handheld.export`): checkpoint -> scheme -> torch.export -> backend lowering -> `.pte` with its
metadata. Backends are entries in `backends/`; NPU backends' calibrated schemes go through `npu.py` (quantize
anywhere, lower where the vendor SDK is). Imports `handheld.quant` and `handheld.core`."""
