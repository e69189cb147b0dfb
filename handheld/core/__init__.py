"""Floor 0: what every other floor builds on, a room per concern: `llama` (the model, its params, the Hadamards of
its rotated variants), `checkpoints` (Meta, Hugging Face, GGUF and Meta's pre-quantized layout), `tokenizers`
(tiktoken and Hugging Face, chat templates, the Guard prompt), `fetch` (the pretrained catalog and its cache); and
beside them errors, atomic writes, defaults and the `.pte` metadata contract."""
