"""Where pretrained files come from: the catalog of PyPI wheels that carry them, and the local cache."""
