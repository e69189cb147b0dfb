"""Every default that more than one place needs, stated once: options, CLI flags and docs read it here."""

GROUP_SIZE = 32  # weights per scale in 4-bit schemes (the Llama 3.2 mobile scheme's g32)
CALIB_SEQ_LEN = 256  # tokens per GPTQ calibration window (capped by the program's --max-seq-len)
GPTQ_CALIB_TOKENS = 16384  # tokens of --calib text GPTQ reads (SmolLM2: ~100 s on 2 cores)
GPTQ_MIN_CALIB_TOKENS = 1024  # fewer and the Hessians of the wider linears are mostly damping
ROTATION = "none"  # rotation before calibrated 4-bit rounding (quant/rotation.py); "quarot" needs --calib
ROTATION_SEED = 0  # seeds a rotation's random Hadamard signs: the same checkpoint and text give the same program
SCALE_RULE = "weighted"  # how a 4-bit group's scale is chosen (quant/scale_rules.py; benchmarks/results/scale_rules_smollm2.json)
KV_CACHES = ("fp32", "int8")  # what a CPU program's KV cache stores (int8: ExecuTorch's quantized cache)
KV_CACHE = "fp32"
MAX_SEQ_LEN = 2048  # KV-cache length of an exported program (prompt + generated tokens): a chat fits
LORA_RANK = 16  # Meta's QLoRA releases: rank 16 ...
LORA_ALPHA = 32.0  # ... and alpha 32 (scale 2.0)
NPU_SEQ_LEN = 256  # NPU programs have static shapes: tokens per call = KV-cache length (eval's default context)
NPU_CALIB_SEQUENCES = 16  # calibration sequences of NPU_SEQ_LEN tokens that set an NPU scheme's activation ranges
DRAFT_TOKENS = 4  # speculative decoding: tokens a draft proposes per target call
