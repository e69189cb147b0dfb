"""Floor 2 (`handheld.export`): checkpoint -> scheme -> torch.export -> backend lowering -> `.pte` with its
metadata. Backends are entries in `backends/`. Imports `handheld.quant` and `handheld.core`."""
