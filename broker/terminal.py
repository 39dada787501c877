"""How the `broker` command prints tables: sized to the terminal, or whole when the output is piped.

Rich cuts a table to the terminal's width (80 columns when there is no terminal) and ends cut values with an
ellipsis, which turns an access key id into ``ASIARZP...`` in a pipe or a file. Piped output gets every value
in full instead; ``--json`` gives the same rows for scripts.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# Wide enough for any value; Rich sizes a non-expanding table to its content, so nothing is padded to this.
PIPE_WIDTH = 100_000


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` on ``console``; in full (no cut values) when the console is not a terminal."""
    if console.is_terminal:
        console.print(table)
        return
    wide = Console(file=console.file, width=PIPE_WIDTH, highlight=False, color_system=None)
    wide.print(table)
