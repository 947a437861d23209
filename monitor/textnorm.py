"""Text normalisation shared by relevance matching and de-duplication."""
from __future__ import annotations

import re
import unicodedata

# Zero-width and bidirectional controls hide words from matching ("Harrow\u200bgate").
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u00ad]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def fold(text: str) -> str:
    """NFKC, invisible characters removed, apostrophes unified, casefolded."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    return text.translate(_APOSTROPHES).casefold()
