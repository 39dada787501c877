"""The README's layout section shows the whole tree: every module of ``broker/`` is named there, under its
package, and every module named there exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> dict[str, set[str]]:
    """Names in the layout's code block, by the package whose block they are in ("" is broker/ itself)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    named: dict[str, set[str]] = {}
    package = None
    for line in block.splitlines():
        if re.match(r"^broker/", line):
            package = ""
            continue
        if re.match(r"^\S", line):
            package = None  # config/, tests/ ...: outside broker/
            continue
        if package is None:
            continue
        sub = re.match(r"^  (\w+)/", line)
        if sub:
            package = sub.group(1)
            continue
        if re.match(r"^  \w", line):
            package = ""
        words = line.split("  ")
        names = [w.strip() for w in words if re.fullmatch(r"\s*[\w]+\.py\s*", w)]
        for name in names:
            named.setdefault(package, set()).add(name)
    return named


def _modules() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "broker").rglob("*.py"):
        if path.name in {"__init__.py", "__main__.py"}:
            continue
        package = path.parent.relative_to(ROOT / "broker").as_posix()
        found.setdefault("" if package == "." else package, set()).add(path.name)
    return found


def test_every_module_is_in_the_readme_layout() -> None:
    named, modules = _layout(), _modules()
    missing = sorted(
        f"{pkg}/{name}".lstrip("/") for pkg, names in modules.items() for name in names - named.get(pkg, set())
    )
    assert not missing, "modules missing from the README's layout: " + ", ".join(missing)


def test_every_module_in_the_readme_layout_exists() -> None:
    named, modules = _layout(), _modules()
    stale = sorted(
        f"{pkg}/{name}".lstrip("/") for pkg, names in named.items() for name in names - modules.get(pkg, set())
    )
    assert not stale, "the README's layout names modules that do not exist: " + ", ".join(stale)
