"""The built-in PII redaction rules: e-mail addresses, phone numbers and card numbers
(those only when their digits pass the Luhn check). Their patterns are data, in
``pii_rules.json``; a tenant takes them by name (``llmos tenant filters set --pii``)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from schemas.filters import Direction, RedactionRule


@cache
def _definitions() -> dict[str, dict[str, object]]:
    text = resources.files(__package__).joinpath("pii_rules.json").read_text()
    loaded: dict[str, dict[str, object]] = json.loads(text)
    return loaded


def names() -> list[str]:
    """The built-in rules, in the order they are best applied (cards before phones)."""
    return list(_definitions())


def builtin(name: str, direction: Direction = Direction.both) -> RedactionRule:
    """The built-in rule ``name``; ValueError naming the known ones otherwise."""
    definition = _definitions().get(name)
    if definition is None:
        raise ValueError(f"unknown PII rule {name!r}; the built-in ones are: "
                         f"{', '.join(names())}")
    return RedactionRule.model_validate(
        {"name": f"pii.{name}", "direction": direction, **definition})
