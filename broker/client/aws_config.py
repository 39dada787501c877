"""Writing AWS CLI profiles without disturbing the user's other profiles or their comments.

The file is edited section by section as text: only the ``[profile NAME]`` sections this tool writes are
replaced; everything else, comments included, is kept byte for byte.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*$")
MARK = "# managed by `broker configure-aws`"


def config_path() -> Path:
    return Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()


def _sections(text: str) -> list[tuple[str | None, list[str]]]:
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines(keepends=True):
        match = _HEADER.match(line)
        if match:
            sections.append((match.group(1), [line]))
        else:
            sections[-1][1].append(line)
    return sections


def render(name: str, values: dict[str, str]) -> list[str]:
    lines = [f"[profile {name}]\n", f"{MARK}\n"]
    lines += [f"{key} = {value}\n" for key, value in values.items()]
    return [*lines, "\n"]


def write_profiles(profiles: dict[str, dict[str, str]], path: Path | None = None) -> tuple[list[str], list[str]]:
    """Add or replace these profiles; return (added, updated) names."""
    path = path or config_path()
    text = path.read_text() if path.exists() else ""
    sections = _sections(text)
    added: list[str] = []
    updated: list[str] = []
    for name, values in profiles.items():
        header = f"profile {name}"
        for index, (existing, _) in enumerate(sections):
            if existing == header:
                sections[index] = (header, render(name, values))
                updated.append(name)
                break
        else:
            if sections[-1][1] and not sections[-1][1][-1].endswith("\n"):
                sections[-1][1].append("\n")
            sections.append((header, render(name, values)))
            added.append(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new_text = "".join(line for _, lines in sections for line in lines)
    tmp = path.with_suffix(".broker-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(new_text)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return added, updated
