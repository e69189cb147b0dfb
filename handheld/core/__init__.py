"""Floor 0: what every other floor builds on. The Llama model, its params, checkpoint formats (Meta, Hugging
Face, Meta's pre-quantized layout), tokenizers, errors, atomic writes, defaults and the `.pte` metadata contract."""
