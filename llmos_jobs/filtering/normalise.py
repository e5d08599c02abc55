"""Input normalisation: one spelling for one text, so that rules and the prefix cache
see the same characters whatever the producer's keyboard or encoder did."""

from __future__ import annotations

import re
import unicodedata

# Runs of whitespace other than a line break: one space. Line breaks stay (a chat
# prompt's structure), each with the spaces before it dropped.
_SPACES = re.compile(r"[^\S\n]+")
_BEFORE_BREAK = re.compile(r" +\n")


def _kept(char: str) -> bool:
    """Control characters go; line breaks and tabs stay (tabs then become spaces)."""
    return char in "\n\t" or unicodedata.category(char) != "Cc"


def normalize(text: str) -> str:
    """NFC, ``\\r\\n`` and ``\\r`` as ``\\n``, control characters removed, runs of
    spaces and tabs as one space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Controls go before composing: one between a letter and its accent would
    # otherwise keep them apart, and leave a text that is not NFC once it went.
    text = unicodedata.normalize("NFC", "".join(c for c in text if _kept(c)))
    return _BEFORE_BREAK.sub("\n", _SPACES.sub(" ", text))
