"""Turning platform HTML into the plain text the classifier and emails see."""
from __future__ import annotations

import re
import unicodedata
import warnings

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

_SPACE = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_BLOCK_TAGS = ("p", "br", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "blockquote")
# Control characters other than newline and tab (C0 and C1, which include terminal
# escapes) say nothing and break terminals and mail.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def html_to_text(markup: str | None) -> str:
    """Visible text of an HTML fragment, with block breaks as newlines."""
    if not markup:
        return ""
    if "<" not in markup and "&" not in markup:
        return clean_text(markup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n")
    return clean_text(soup.get_text())


def clean_text(text: str) -> str:
    """NFC-normalised text without control characters or runs of blank space."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _SPACE.sub(" ", text)
    lines = (line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
