"""Text normalisation so one simple pattern matches the many ways a post spells a phrase."""
from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"</?[a-zA-Z][^<>]{0,500}>|<!--|-->")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Leetspeak only between two letters, so "year 10", "3pm" and "y7s"/"yr7s" survive.
_LEET = re.compile(r"(?<=[^\W\d_])(?<![yY])(?<![yY][rR])[01345@$!](?=[^\W\d_])")
_LEET_MAP = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "@": "a", "$": "s", "!": "i"}
_REPEATS = re.compile(r"([^\W\d_])\1{2,}")
_SPACES = re.compile(r" {2,}")
_APOSTROPHES = frozenset("'\u2018\u2019\u201b\u02bc\u02b9\u0060\u00b4\u2032")
# Kept because patterns use them: apostrophes for "can't", "*" for censored "f*ck".
_KEEP = frozenset("*")


class _CharMap(dict[int, str | None]):
    """str.translate table built lazily, one Unicode category lookup per distinct char."""

    def __missing__(self, codepoint: int) -> str | None:
        char = chr(codepoint)
        category = unicodedata.category(char)
        value: str | None
        if char in _APOSTROPHES:
            value = "'"
        elif char in _KEEP:
            value = char
        elif category in ("Cf", "Mn", "Me"):
            # Zero-width joiners, bidi overrides, soft hyphens, variation selectors and
            # combining marks: invisible, and used to split words past keyword filters.
            value = None
        elif category[0] in "PZ" or category in ("Cc", "Cs", "Cn"):
            value = " "
        else:
            value = char
        self[codepoint] = value
        return value


_CHARS = _CharMap()


def plain_text(text: str) -> str:
    """Text without HTML tags and entities, in Unicode NFKC form."""
    if "&" in text:
        text = html.unescape(text)
    if "<" in text or "-->" in text:
        text = _TAG.sub(" ", text)
    return unicodedata.normalize("NFKC", text)


def normalise(text: str) -> str:
    """Casefolded, single-spaced text with punctuation, invisibles and letter runs tamed."""
    text = plain_text(text)
    if "://" in text or "www." in text.casefold():
        text = _URL.sub(" ", text)
    text = _LEET.sub(lambda m: _LEET_MAP[m.group()], text)
    text = text.translate(_CHARS).casefold()
    text = _REPEATS.sub(r"\1\1", text)
    return _SPACES.sub(" ", text).strip()
