"""Option values that the command line spells as text: ``2=1,3=1``, ``1=liver,2=tumour``, ``auto``."""
from __future__ import annotations

from ..errors import InputError


def parse_int_map(text: str | None, option: str) -> dict[int, int]:
    """'2=1,3=1' -> {2: 1, 3: 1}."""
    if not text:
        return {}
    result = {}
    for item in text.split(","):
        source, _, target = item.partition("=")
        try:
            result[int(source)] = int(target)
        except ValueError:
            raise InputError(f"{option} {text!r}: expected SOURCE=TARGET pairs of integers, e.g. 2=1") from None
    return result


def parse_label_names(text: str | None) -> dict[int, str] | None:
    """'1=liver,2=tumour' -> {1: 'liver', 2: 'tumour'}."""
    if not text:
        return None
    names = {}
    for item in text.split(","):
        value, _, name = item.partition("=")
        if not value.strip().isdigit() or not name.strip():
            raise InputError(f"--labels {text!r}: expected VALUE=NAME pairs, e.g. 1=liver,2=tumour")
        names[int(value)] = name.strip()
    return names


def parse_lesion_label(text: str) -> int | None | bool:
    """'auto' -> None (the label whose name contains tumour/tumor/lesion), 'none' -> False (no lesion
    evaluation), 'N' -> N."""
    word = text.strip().lower()
    if word == "auto":
        return None
    if word == "none":
        return False
    if not word.isdigit() or int(word) == 0:
        raise InputError(f"--lesion-label {text!r}: expected a foreground label value (e.g. 2), auto or none")
    return int(word)


__all__ = ["parse_int_map", "parse_label_names", "parse_lesion_label"]
