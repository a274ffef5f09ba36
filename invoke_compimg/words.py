"""How people write yes and no in settings and environment variables."""

from __future__ import annotations

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def yes_or_no(text: str) -> bool | None:
    """True or False for the words above (any case, spaces around ignored), else None."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None
