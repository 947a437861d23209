"""Is a mention about this school? Names and handles on word boundaries, minus exclusions."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from monitor.textnorm import fold


_NON_WORD = re.compile(r"\W+")


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first so "Harrowgate High School" wins over "Harrowgate High".
    parts = sorted({re.escape(fold(p).strip()) for p in phrases if p.strip()}, key=len, reverse=True)
    if not parts:
        return None
    # Lookarounds rather than \b, so names ending in "'s" or handles starting with "@" work.
    return re.compile(r"(?<![\w@#])(?:" + "|".join(parts) + r")(?![\w])")


@dataclass(frozen=True)
class SchoolMatcher:
    """Decides relevance for one school."""

    names: re.Pattern[str] | None
    exclusions: re.Pattern[str] | None

    @classmethod
    def build(cls, name: str, aliases: Iterable[str], handles: Iterable[str],
              exclusions: Iterable[str]) -> SchoolMatcher:
        """A matcher for the school's name, aliases and handles (with or without the @)."""
        handle_forms = []
        for handle in handles:
            bare = handle.lstrip("@")
            handle_forms += [f"@{bare}", bare]
        # Hashtags run names together: #HarrowgateHighSchool, #StAidans.
        hashtags = ["#" + _NON_WORD.sub("", n) for n in (name, *aliases) if _NON_WORD.search(n)]
        return cls(_phrase_pattern([name, *aliases, *handle_forms, *hashtags]),
                   _phrase_pattern(exclusions))

    def matches(self, *texts: str | None) -> bool:
        """True when any text names the school outside an excluded phrase."""
        if self.names is None:
            return False
        for text in texts:
            if not text:
                continue
            folded = fold(text)
            if self.exclusions is not None:
                # Blank out exclusions so "Harrowgate High Street" cannot match "Harrowgate High".
                folded = self.exclusions.sub(lambda m: " " * len(m.group()), folded)
            if self.names.search(folded):
                return True
        return False
