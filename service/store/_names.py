"""Formula names: 1-64 characters, a letter or digit first, then letters, digits, ``_ . -``."""

from __future__ import annotations

import re

from service.errors import InvalidInput

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str) -> str:
    """``name`` if it is a valid formula name, else a 400 ``invalid_name`` saying why."""
    if not 1 <= len(name) <= 64:
        raise InvalidInput(
            f"A formula name has 1 to 64 characters; this one has {len(name)}.", error_type="invalid_name"
        )
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"The formula name {name!r} is not allowed: it must start with a letter or digit and hold only "
            "letters, digits, '_', '.' and '-'.",
            error_type="invalid_name",
        )
    return name
