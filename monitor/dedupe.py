"""Exact duplicate keys: the canonical URL and a hash of the normalised text."""
from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from monitor.textnorm import fold

# Query parameters that identify a click or a campaign, not the content.
_TRACKING_PARAMS = re.compile(
    r"^(utm_\w+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|mc_cid|mc_eid|igshid|si|s|t|ref|"
    r"ref_src|ref_url|cmpid|ocid|smid|_ga|__twitter_impression|at_\w+|ito|share|feature)$",
    re.IGNORECASE,
)
_URL = re.compile(r"https?://\S+")
_RETWEET_PREFIX = re.compile(r"^(rt|via)\s+@\w+:?\s*")
_NON_WORD = re.compile(r"[\W_]+")
MIN_HASHED_CHARS = 12


def canonical_url(url: str) -> str:
    """The URL with tracking parameters, fragment, default port and www. removed."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return url.strip()
    host = (parts.hostname or "").lower().removeprefix("www.").removeprefix("m.")
    if parts.port and parts.port not in (80, 443):
        host = f"{host}:{parts.port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not _TRACKING_PARAMS.match(k)]
    path = parts.path.rstrip("/") or "/"
    return urlunsplit(("https", host, path, urlencode(sorted(query)), ""))


def normalised_text(text: str) -> str:
    """Text reduced to its words: no URLs, retweet prefixes, punctuation or case."""
    folded = _URL.sub(" ", fold(text))
    folded = _RETWEET_PREFIX.sub("", folded.strip())
    return " ".join(_NON_WORD.sub(" ", folded).split())


def text_hash(text: str) -> str:
    """SHA-256 of the normalised text, or '' when too little is left to mean anything."""
    words = normalised_text(text)
    if len(words) < MIN_HASHED_CHARS:
        return ""
    return hashlib.sha256(words.encode()).hexdigest()
