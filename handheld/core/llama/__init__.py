"""The Llama model: its one export-shaped module (`model`), its typed parameters (`config`; 1B, 3B and friends are
JSON files under `params/`) and the Hadamard matrices its rotated variants apply online."""
