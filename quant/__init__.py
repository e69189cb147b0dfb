"""Floor 1 (`handheld.quant`): numeric schemes as an explicit table, and one `model -> model` transform per
module (8da4w, fake quantization, LoRA, SpinQuant rotations, R4, GPTQ); building models in Meta's
pre-quantized layout. Imports only `handheld.core`."""
