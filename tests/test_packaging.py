"""A wheel built from the repository installs into a clean venv and every verb works from it.

The venv sees this interpreter's site-packages (torch, executorch) through a plain path entry, so the
editable install of the checkout stays out of it: what runs is the wheel's copy.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from handheld.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> tuple[list[str], dict[str, str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["packages"], config["package-dir"]


def test_every_package_folder_is_declared():
    packages, package_dir = _declared_packages()
    found = set()
    for package, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert sorted(found - set(packages)) == [], "package folders missing from pyproject.toml's packages"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # A path entry, not a site dir: the checkout's editable-install hooks (.pth files there) are not run.
    (Path(site) / "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((tmp / "dist").glob("handheld-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    return venv


def test_the_wheel_is_what_runs(wheel_venv):
    # Run outside the checkout: from its root, `python -c` would see the source folder `handheld/` first.
    where = subprocess.run([wheel_venv / "bin" / "python", "-c", "import handheld.cli, handheld.quant; "
                            "print(handheld.cli.__file__, handheld.quant.__file__)"],
                           capture_output=True, text=True, check=True, cwd=wheel_venv).stdout
    assert str(wheel_venv) in where and str(ROOT) not in where


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_answers_help_from_the_wheel(wheel_venv, verb):
    done = subprocess.run([wheel_venv / "bin" / "handheld", verb, "--help"], capture_output=True, text=True, cwd=wheel_venv)
    assert done.returncode == 0, done.stderr
    assert f"handheld {verb}" in done.stdout


def test_the_wheel_carries_its_data(wheel_venv, tmp_path):
    """Named shapes, the proxy model and the native runner's sources are package data."""
    done = subprocess.run([wheel_venv / "bin" / "handheld", "init-random", "--model", "tiny", "-o", str(tmp_path / "t")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    check = ("from handheld.runtime_bindings.native.build import SOURCES, SOURCE_FILES; "
             "from handheld.core.fetch.catalog import proxy_dir; "
             "assert all((SOURCES / f).is_file() for f in SOURCE_FILES); assert (proxy_dir() / 'params.json').is_file()")
    subprocess.run([wheel_venv / "bin" / "python", "-c", check], check=True, cwd=tmp_path)


# Modules tests skip without, by the declared distribution that brings them; the peers extra is optional by design.
_SKIPPED_WITHOUT = {"yaml": "pyyaml", "pytorch_tokenizers.pytorch_tokenizers_cpp": "executorch"}


def test_what_tests_need_is_declared_and_the_python_claimed_is_the_one_tested():
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ]", dep)[0].lower() for dep in project["dependencies"] + project["optional-dependencies"]["test"]}
    skipped = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        skipped |= set(re.findall(r'importorskip\("([\w.]+)"\)', path.read_text()))
    skipped.discard("llama_cpp")  # the peers extra: compiled for minutes, optional
    unknown = skipped - set(_SKIPPED_WITHOUT)
    assert not unknown, f"tests skip without {unknown}: declare them in the test extra and list them here"
    missing = {module for module in skipped if _SKIPPED_WITHOUT[module] not in declared}
    assert not missing, f"tests silently skip without {missing}, which no extra installs"
    assert project["requires-python"].split("#")[0].strip() == f">={sys.version_info.major}.{sys.version_info.minor}"
