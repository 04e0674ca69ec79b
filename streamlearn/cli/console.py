"""The one place where the CLI writes to the terminal: consoles, safe text, JSON, warnings.

Everything a user supplied (texts, labels, task names, error messages quoting them) reaches rich
as plain `Text`, never as markup, with control and bidirectional-override characters shown as
escapes: `"[/bold]"` prints as itself instead of raising `MarkupError`, `"[red]x[/red]"` is not
restyled, an ESC sequence cannot move the cursor or recolour the terminal, and U+202E cannot
reverse what follows it (the "Trojan Source" trick, Boucher & Anderson 2021, arXiv:2111.00169).
JSON output is exact: `json.dumps` escapes those characters itself.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import click

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
"""C0 and C1 controls, DEL, and the invisible or bidirectional formatting characters."""

PIPE_WIDTH = 100_000
"""Width given to piped output: rich sizes tables to their content, so no value is ever cut."""


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """`str(value)` with every control and bidi character written as an escape (`\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(_escape, "" if value is None else str(value))


def plain(value: Any, style: str = ""):
    """A rich `Text` of `visible(value)`: never parsed as markup."""
    from rich.text import Text

    return Text(visible(value), style=style)


def make_console(stderr: bool = False, wide: bool = True):
    """A rich console on stdout (or stderr); piped output gets a page wide enough that no value is cut.

    Piped output (a file, `less`, a test runner) has no width, and rich would squeeze tables into
    80 columns and cut values; a terminal keeps its real width.
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if wide and not stream.isatty():
        return Console(stderr=stderr, width=PIPE_WIDTH, highlight=False)
    return Console(stderr=stderr, highlight=False)


def echo_json(obj) -> None:
    """Print `obj` as indented JSON on stdout (the `--json` output of every command)."""
    import json

    click.echo(json.dumps(obj, indent=2))


def warn(message: str) -> None:
    """Print a hint or warning on stderr, piped or not, so it never mixes into tables or JSON."""
    click.echo(visible(message), err=True)


def count(n: int, noun: str) -> str:
    """`1 task`, `2 tasks`."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
