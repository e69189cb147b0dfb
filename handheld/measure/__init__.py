"""Floor 3: measuring. `bench` (speed and memory, fresh process per run), `host` (machine facts, bandwidth),
`gate` (the CI regression gate), `report` (Markdown and charts), `quality` (perplexity, agreement, KL)."""
