"""Page watches: a forum thread, a news section or a review page, yielding only its new blocks."""
from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import soupsieve
from bs4 import BeautifulSoup, Tag
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._common import dump_cursor_map, load_cursor_map, remember, utcnow
from connectors.base import Batch, Connector, Mention, NotConfigured, SchoolContext
from connectors.http import DEFAULT_MAX_BYTES, HttpClient
from connectors.text import clean_text

log = logging.getLogger(__name__)

# Blocks of running text. div is left out: it wraps everything. Nested matches (p in td, p in li)
# count once, as the innermost, so a layout table does not become one giant block.
DEFAULT_BLOCKS = "p, li, h1, h2, h3, h4, h5, h6, td, th, blockquote, dd, dt, pre, figcaption"
# Page furniture, not content. A header inside an article or main is kept: it holds the title.
DEFAULT_EXCLUDE = ["nav", "footer", "aside", "script", "style", "noscript", "template", "svg",
                   "form", "header:not(article header, main header)", "[role=navigation]",
                   "[role=banner]", "[role=contentinfo]", "[aria-hidden=true]"]
# Blocks up to this long link to themselves whole; longer ones by their first and last words.
FRAGMENT_WHOLE = 80
FRAGMENT_WORDS = 4
_HASH_CHARS = 16
_CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.IGNORECASE)


def _selector(value: str) -> str:
    try:
        soupsieve.compile(value)
    except soupsieve.SelectorSyntaxError as exc:
        raise ValueError(f"{value!r} is not a CSS selector: {exc.args[0].splitlines()[0]}") from None
    return value


class WebpageConfig(BaseModel):
    """Options of a ``webpage`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    # CSS selector for the blocks to watch, e.g. "div.post-body" on a forum thread.
    selector: str | None = None
    # Removed before blocks are chosen.
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    # Shorter blocks ("Reply", "12", "»") are page furniture, not mentions.
    min_block_chars: int = Field(3, ge=1, le=1000)
    emit_existing_on_first_poll: bool = True
    # Hashes of blocks no longer on the page are kept this long (in blocks) so they stay known.
    remember_blocks: int = Field(2000, ge=100, le=50_000)
    timeout: float = Field(20.0, gt=0, le=120)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, le=100 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.strip()

    @field_validator("selector")
    @classmethod
    def _css(cls, value: str | None) -> str | None:
        return None if value is None else _selector(value)

    @field_validator("exclude")
    @classmethod
    def _css_list(cls, value: list[str]) -> list[str]:
        return [_selector(v) for v in value]


class WebpageConnector(Connector):
    """Fetches a page with conditional GET and yields blocks of text it has not seen before."""

    Config = WebpageConfig
    config: WebpageConfig

    def __init__(self, config: WebpageConfig, school: SchoolContext, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.http = HttpClient(timeout=config.timeout, max_bytes=config.max_bytes)

    def fetch(self, cursor: str | None) -> Batch:
        """New blocks since the last snapshot; a 304 yields nothing and costs nothing."""
        config = self.config
        state = load_cursor_map(cursor, self.source_id)
        if state.get("url") != config.url:
            state = {}  # a new address: its validators and hashes do not apply
        headers = {}
        if state.get("etag"):
            headers["If-None-Match"] = state["etag"]
        if state.get("modified"):
            headers["If-Modified-Since"] = state["modified"]
        response = self.http.get(config.url, headers=headers, ok=(200, 304))
        if response.status == 304:
            return Batch(mentions=[], next_cursor=cursor, cost=0)
        content_type = (response.header("Content-Type") or "text/html").lower()
        if "html" in content_type or "xml" in content_type:
            title, blocks = extract_blocks(response.body, config.selector, config.exclude,
                                           _charset(content_type))
        elif content_type.startswith("text/"):
            title, blocks = None, _lines(_decode(response.body, _charset(content_type)))
        else:
            raise NotConfigured(f"{config.url} is {content_type.split(';')[0]}, not a web page")
        blocks = [b for b in blocks if len(b) >= config.min_block_chars]
        first_poll = "blocks" not in state
        known = set(state.get("blocks") or [])
        ids = [block_id(config.url, b) for b in blocks]
        fetched_at = utcnow()
        mentions = []
        if not first_poll or config.emit_existing_on_first_poll:
            mentions = [_mention(config.url, response.url, title, text, ident, index, fetched_at)
                        for index, (text, ident) in enumerate(zip(blocks, ids, strict=True))
                        if ident[:_HASH_CHARS] not in known]
        current = [i[:_HASH_CHARS] for i in ids]
        # Blocks on the page are always kept; the cap only trims blocks that have gone.
        limit = max(config.remember_blocks, len(current))
        next_state = {"url": config.url, "blocks": remember(current, state.get("blocks") or [], limit)}
        for key, header in (("etag", "ETag"), ("modified", "Last-Modified")):
            if response.header(header):
                next_state[key] = response.header(header)
        log.debug("webpage source %s: %d blocks, %d new", self.source_id, len(blocks), len(mentions))
        return Batch(mentions=mentions, next_cursor=dump_cursor_map(next_state), cost=1)

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()


def extract_blocks(body: bytes, selector: str | None, exclude: list[str],
                   encoding: str | None = None) -> tuple[str | None, list[str]]:
    """The page title and its text blocks in page order, whitespace-normalised, without repeats."""
    soup = BeautifulSoup(body, "lxml", from_encoding=encoding)
    title_tag = soup.find("title")
    title = clean_text(title_tag.get_text(" ")) if title_tag else None
    for css in exclude:
        for tag in soup.select(css):
            if not tag.decomposed:
                tag.decompose()
    if selector:
        root: Any = soup
        elements = soup.select(selector)
    else:
        root = soup.select_one("main") or soup.select_one("[role=main]") or soup.body or soup
        elements = root.select(DEFAULT_BLOCKS)
    texts = [_block_text(e) for e in _innermost(elements)]
    if not selector and not any(texts):
        # Pages without paragraph markup (text in bare divs and <br>s): fall back to lines.
        texts = _lines(root.get_text("\n"))
    return title or None, list(dict.fromkeys(t for t in texts if t))


def block_id(url: str, text: str) -> str:
    """sha256 of the page URL and the block's normalised text: the block's external id."""
    return hashlib.sha256(f"{url}\n{text}".encode()).hexdigest()


def text_fragment_url(url: str, text: str) -> str:
    """``url`` with a #:~:text= fragment that makes browsers scroll to and highlight ``text``."""
    words = text.split()
    if len(text) <= FRAGMENT_WHOLE:
        directive = _fragment_part(text)
    elif len(words) >= 2 * FRAGMENT_WORDS:
        directive = (_fragment_part(" ".join(words[:FRAGMENT_WORDS])) + ","
                     + _fragment_part(" ".join(words[-FRAGMENT_WORDS:])))
    else:
        return url
    return url + (":~:text=" if "#" in url else "#:~:text=") + directive


def _fragment_part(text: str) -> str:
    # "-", "," and "&" are syntax inside a text directive, so they must be escaped too.
    return quote(text, safe="").replace("-", "%2D")


def _innermost(elements: list[Tag]) -> list[Tag]:
    """Matches that contain no other match, so nested blocks (p in td) are read once each."""
    chosen = {id(e) for e in elements}
    containers = {id(parent) for e in elements for parent in e.parents if id(parent) in chosen}
    return [e for e in elements if id(e) not in containers]


def _block_text(element: Tag) -> str:
    return " ".join(clean_text(element.get_text(" ")).split())


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in clean_text(text).split("\n") if line.strip()]


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _charset(content_type: str) -> str | None:
    found = _CHARSET.search(content_type)
    return found.group(1) if found else None


def _mention(url: str, final_url: str, title: str | None, text: str, ident: str, index: int,
             fetched_at: datetime) -> Mention:
    return Mention(
        platform="webpage",
        external_id=ident,
        url=text_fragment_url(url, text),
        author=None,
        title=title,
        text=text,
        # A block carries no date of its own; when it was first seen is the best there is.
        published_at=fetched_at,
        fetched_at=fetched_at,
        raw={"page_url": url, "final_url": final_url, "block_index": index, "page_title": title},
    )
