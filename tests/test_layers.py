"""The house has floors: imports inside the package only go down (see `handheld/__init__.py`).

Every module's imports, including those inside functions, are parsed with `ast`; source folders are
mapped to module names through pyproject.toml's `package-dir`, as setuptools installs them.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Package -> floor. Packages on one floor may not import each other.
FLOORS = {
    "handheld.core": 0,
    "handheld.quant": 1,
    "handheld.export": 2,
    "handheld.runtime_bindings": 2,
    "handheld.decoding": 3,
    "handheld.training": 3,
    "handheld.measure": 4,
    "handheld.api": 5,
    "handheld.cli": 6,
}
ENTRY_POINT = "handheld.__main__"  # `python -m handheld`: above everything


def package_dirs() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / folder for package, folder in config["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found.setdefault(name, path)  # a mapped subfolder wins over the same folder seen from its parent
    return found


def room(module: str) -> str | None:
    """The floor package a module lives in (None for the package root and its entry point)."""
    return next((p for p in FLOORS if module == p or module.startswith(p + ".")), None)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name == "handheld" or name.startswith("handheld.")]


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """One line per import that goes up a floor or sideways into another package on the same floor."""
    mine = room(module)
    if module == ENTRY_POINT:
        return []
    problems = []
    for line, target in imported_modules(source, module, is_package):
        theirs = room(target)
        if theirs is None or theirs == mine:
            continue  # the package root (its version), or the same room
        if mine is None or FLOORS[theirs] >= FLOORS[mine]:
            where = "up" if mine is None or FLOORS[theirs] > FLOORS[mine] else "sideways"
            problems.append(f"{module}:{line} imports {target} ({where}: {theirs} is on floor {FLOORS[theirs]}, "
                            f"{mine} on floor {FLOORS.get(mine)})")
    return problems


def test_every_module_has_a_floor():
    homeless = [name for name in modules() if room(name) is None and name not in ("handheld", ENTRY_POINT)]
    assert not homeless, f"modules outside every floor: {homeless}"


def test_imports_only_go_down():
    problems = []
    for name, path in modules().items():
        problems += upward_imports(name, path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_upward_import():
    # A deliberate violation of each kind, including a lazy import inside a function and a relative one.
    assert upward_imports("handheld.core.llama.model", "def f():\n    from handheld.measure.bench import BenchConfig\n")
    assert upward_imports("handheld.quant.lora", "import handheld.export.program\n")
    assert upward_imports("handheld.export.program", "from handheld.runtime_bindings.python import program\n")
    assert upward_imports("handheld.core.checkpoints.meta", "from ...measure import bench\n")
    assert not upward_imports("handheld.cli.export", "from handheld.export.program import export_program\n")
    assert not upward_imports("handheld.quant.lora", "from handheld.core.errors import HandheldError\n")


def test_the_source_folders_are_the_floors_they_claim():
    found = modules()
    for package in FLOORS:
        assert package in found, f"{package} has no folder (pyproject.toml's package-dir or a missing __init__.py)"


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_every_module_has_a_test_a_newcomer_can_find():
    """tests/test_<module>.py, or a row of tests/README.md naming the module and test files that exist."""
    index = (ROOT / "tests" / "README.md").read_text()
    missing, dangling = [], []
    for module, path in sorted(modules().items()):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if (ROOT / "tests" / f"test_{path.stem}.py").is_file():
            continue
        row = next((line for line in index.splitlines() if f"`{module}`" in line), None)
        if row is None:
            missing.append(module)
            continue
        named = [word.strip(" ,()") for word in row.split("|")[2].split() if word.strip(" ,()").endswith(".py")]
        dangling += [f"{module}: {name}" for name in named if not (ROOT / "tests" / name).is_file()]
    assert not missing, f"modules with no test_<name>.py and no row in tests/README.md: {missing}"
    assert not dangling, f"tests/README.md names test files that do not exist: {dangling}"
