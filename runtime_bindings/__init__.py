"""Floor 2 (`handheld.runtime_bindings`): running a `.pte`. `python/` is ExecuTorch's Python runtime
(`--runner python`), `native/` handheld's C++ runner (`--runner native`); `generation.py` is the greedy loop
both share with the eager model; `llm_runner.py` runs ExecuTorch's own C++ LLM runner, for parity with it.
Imports only `handheld.core`."""
