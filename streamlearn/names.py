"""The one rule for task names, used by submission, the catalogue and the artifact store.

A task name becomes a folder of the store (`tasks/<name>/`) and a key of the catalogue, so it is
short, made of characters that are safe in a path on every system, and cannot climb out of the
store. Names are unique without regard to case: `same`, `Same` and `SAME` would be three folders
on Linux but one on macOS and Windows file systems, and three tasks a reader cannot tell apart.
"""

from __future__ import annotations

import re

from streamlearn.errors import InvalidConfig

TASK_NAME_MAX = 64
"""Longest task name, in characters."""

TASK_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{TASK_NAME_MAX - 1}}}$")
"""Letters, digits, '.', '_', '-'; 1-64 characters; first a letter or digit."""

RULE = f"use 1-{TASK_NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit"
"""The rule in words, for messages and --help."""


def check_task_name(name: object) -> str:
    """Return `name` if it is a valid task name.

    Raises:
        InvalidConfig: it breaks the rule (`RULE`) or contains '..'.
    """
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name) or ".." in name:
        raise InvalidConfig(f"task name {name!r} is not allowed: {RULE}")
    return name


def task_key(name: str) -> str:
    """The form in which two task names are compared: names equal here are the same task name."""
    return name.lower()
