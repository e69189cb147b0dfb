"""handheld: take Llama 3.2 class models onto phones and Arm boards with ExecuTorch.

The package is a house with floors; a module may import from its own floor's package and from the floors
below it, never from a floor above (tests/test_layers.py checks every import):

    floor 6  handheld.cli                  one module per verb, and the demo
    floor 5  handheld.api                  the Python API: the pipeline as typed functions (the CLI calls it)
    floor 4  handheld.measure              bench, host facts, the CI gate, report, quality evaluation, runner parity
    floor 3  handheld.decoding             what is done with a loaded program: greedy loop, speculative, chat, Guard
             handheld.training             SpinQuant rotation learning and QAT+LoRA jobs, their data and loop
    floor 2  handheld.export               torch.export -> backend lowering -> .pte (source: export/)
             handheld.runtime_bindings     running a .pte: Python runtime, native C++ runner, over adb (runtime_bindings/)
    floor 1  handheld.quant                schemes and model -> model transforms, pre-quantized layouts (quant/)
    floor 0  handheld.core                 llama (model, params), checkpoints, tokenizers, fetch; errors, defaults,
                                           atomic writes, .pte metadata

Packages on one floor do not import each other. "training" is what other tools call quantization
recipes; the name avoids ExecuTorch's "recipes" (backend lowering presets).
"""

__version__ = "0.1.0"
