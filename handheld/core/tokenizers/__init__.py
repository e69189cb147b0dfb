"""Text in and out: tiktoken and Hugging Face tokenizers behind one interface (`tokenizer.load_tokenizer`), the
model's own chat template (Jinja2, sandboxed) and the Llama Guard prompt."""
