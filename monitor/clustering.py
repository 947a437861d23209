"""Near-duplicate stories: MinHash LSH candidates over content words, confirmed with rapidfuzz.

Exact keys (canonical URL, text hash) live in monitor.incidents; this module finds the same
story told with different words: retweets cut short, quote posts, one press-agency story
under five outlets' headlines, Google News items whose GUIDs and links change per fetch.
"""
from __future__ import annotations

import heapq
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from datasketch import MinHash, MinHashLSH
from datasketch.storage import UnorderedStorage
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rapidfuzz import fuzz
from sqlalchemy import Engine, event, select
from sqlmodel import Session

from monitor.dedupe import normalised_text
from monitor.store import MentionRow, as_utc, utcnow

REBUILD_BATCH = 2000
MAX_REFS = 10
_SEED = 1


class ClusteringSettings(BaseModel):
    """The [incidents] table: how near-duplicate mentions are grouped into one incident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    num_perm: int = Field(128, ge=16, le=512)
    # Words per shingle. 1 (a bag of content words) because outlets reword the lede: on the
    # story fixtures a mention's best match in its own story has 3-shingle J >= 0.11 while
    # other stories reach 0.14; with single words it is >= 0.26 against <= 0.22.
    shingle_size: int = Field(1, ge=1, le=5)
    # Jaccard similarity LSH aims at for candidates (128 perms: 37 bands of 3); kept low for
    # recall (P=0.91 at J=0.4, 0.04 at J=0.1), rapidfuzz decides.
    lsh_threshold: float = Field(0.3, gt=0.0, lt=1.0)
    # rapidfuzz token_set_ratio (0-100) of content words that confirms a candidate. On the
    # fixtures a mention scores >= 79 against its own story, <= 59 against any other.
    confirm_ratio: float = Field(70.0, ge=0.0, le=100.0)
    window_days: int = Field(14, ge=1, le=365)
    # Texts with fewer content words ("lol", "this is disgraceful") never cluster by text,
    # and a match must share at least this many content words.
    min_words: int = Field(6, ge=1, le=100)
    # Headline and lede are what outlets share; later paragraphs diverge and dilute.
    max_words: int = Field(60, ge=10, le=1000)
    # Bound on rapidfuzz checks per lookup, newest first, so one huge story cannot stall a poll.
    max_candidates: int = Field(200, ge=1, le=100_000)

    @model_validator(mode="after")
    def _shingles_fit(self) -> ClusteringSettings:
        if self.shingle_size > self.min_words:
            raise ValueError("shingle_size cannot be larger than min_words")
        return self


@dataclass(frozen=True)
class Match:
    """The incident a text was matched to, through which indexed mention, and how closely."""

    incident_id: int
    mention_id: int
    score: float


# --- text ---------------------------------------------------------------------------------

_STOP_WORDS = frozenset("""
a about after again all also am an and any are as at be been before being but by can could
did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not now of off on once
only or other our ours out over own same says said say she should so some such than that the
their theirs them then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours s t d ll m re ve
""".split())
# Google News lists each outlet's headline as "Headline&nbsp;&nbsp;Outlet"; the names recur
# across unrelated stories. Matched before folding turns the no-break spaces into spaces.
_GOOGLE_NEWS_SOURCE = re.compile(r"\u00a0\u00a0[^\n]{1,80}$", re.MULTILINE)
_TITLE_SOURCE = re.compile(r"\s+[-\u2013\u2014|]\s+[^-\u2013\u2014|\n]{2,40}$")
_FEED_FOOTER = re.compile(r"\bthe post\b.{0,300}?\bappeared first on\b[^\n]{0,120}",
                          re.IGNORECASE | re.DOTALL)
# X cuts long retweets with an ellipsis; the word before it may be cut too.
_TRUNCATED = re.compile(r"\S*\s*(?:\u2026|\.\.\.)\s*$")
_SHARE_MARKER = re.compile(r"\b(?:rt|qt|mt|via)\s+@[\w.]+:?", re.IGNORECASE)
_HANDLE = re.compile(r"(?<![\w@])@[\w.]+(?:@[\w.-]+)?")
_TRAILING_TAGS = re.compile(r"(?:\s*#\w+)+\s*$")
_URL = re.compile(r"https?://\S+|\bwww\.\S+|\bt\.co/\S+", re.IGNORECASE)


def story_text(title: str | None, text: str) -> str:
    """The headline without its " - Outlet" suffix, then the body: what a story is compared by."""
    if not title:
        return text
    headline = _TITLE_SOURCE.sub("", title.strip())
    if text.strip() == title.strip():
        return headline
    return f"{headline}\n{text}"


def content_words(text: str, max_words: int = 60) -> list[str]:
    """The words a story is compared by: no share markers, handles, links, tag clouds, stop words."""
    # Each pattern only runs when its marker is present: most posts have none of them.
    if "\u00a0\u00a0" in text:
        text = _GOOGLE_NEWS_SOURCE.sub("", text)
    if "appeared first on" in text:
        text = _FEED_FOOTER.sub(" ", text)
    if text.rstrip().endswith(("\u2026", "...")):
        text = _TRUNCATED.sub(" ", text)
    if "://" in text or "www." in text or "t.co/" in text:
        text = _URL.sub(" ", text)
    if "@" in text:
        text = _HANDLE.sub(" ", _SHARE_MARKER.sub(" ", text))
    if "#" in text:
        text = _TRAILING_TAGS.sub(" ", text)
    words = [w for w in normalised_text(text).split() if w not in _STOP_WORDS]
    return words[:max_words]


def story_refs(platform: str, raw: dict[str, Any] | None) -> list[str]:
    """External ids of the posts this one reposts, quotes or replies to, on the same platform."""
    if not isinstance(raw, dict):
        return []
    refs: list[Any] = []
    if platform == "x":
        # A native quote carries only the comment and a t.co link: the reference is all there is.
        for ref in raw.get("referenced_tweets") or []:
            if isinstance(ref, dict) and ref.get("type") in ("retweeted", "quoted", "replied_to"):
                refs.append(ref.get("id"))
        if raw.get("conversation_id") != raw.get("id"):
            refs.append(raw.get("conversation_id"))
    elif platform == "bluesky":
        record = _dict(raw.get("record"))
        reply = _dict(record.get("reply"))
        refs += [_dict(reply.get("root")).get("uri"), _dict(reply.get("parent")).get("uri")]
        quoted = _dict(_dict(record.get("embed")).get("record"))
        if "record" in quoted:  # app.bsky.embed.recordWithMedia nests the quoted post once more
            quoted = _dict(quoted["record"])
        refs.append(quoted.get("uri"))
    ids = (str(r) for r in refs if isinstance(r, (str, int)) and str(r))
    return list(dict.fromkeys(ids))[:MAX_REFS]


@lru_cache(maxsize=1024)
def _cached_words(text: str, limit: int) -> tuple[str, ...]:
    """Content words; cached because one mention is looked up and staged in turn."""
    return tuple(content_words(text, limit))


def name_words(names: Iterable[str]) -> frozenset[str]:
    """The words of a school's name, aliases and handles ("@HarrowgateHigh" is one word)."""
    words = (w for name in names for w in normalised_text(name.lstrip("@")).split())
    return frozenset(w for w in words if w not in _STOP_WORDS)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@lru_cache(maxsize=8)
def _permutations(num_perm: int) -> Any:
    return MinHash(num_perm=num_perm, seed=_SEED).permutations


@lru_cache(maxsize=8)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows for a threshold; datasketch integrates to find them, ~40 ms a time."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


@lru_cache(maxsize=4096)
def _signature(content: str, shingle_size: int, num_perm: int) -> MinHash:
    """MinHash of a content string; cached because find and add see the same text in turn."""
    words = content.split()
    shingles = {" ".join(words[i:i + shingle_size])
                for i in range(max(1, len(words) - shingle_size + 1))}
    # crc32 rather than datasketch's default sha1: 3x faster, and affine32 mixes it with
    # murmur3's finaliser; the index lives in memory, so only stability across runs matters.
    sig = MinHash(num_perm=num_perm, seed=_SEED, permutations=_permutations(num_perm),
                  hashfunc=zlib.crc32, scheme="affine32")
    sig.update_batch([s.encode() for s in shingles])
    return sig


# --- the index ----------------------------------------------------------------------------

class _Buckets(UnorderedStorage):
    """One LSH band: a lone key is stored bare, a few as a tuple, many as a set."""

    # datasketch's dict storage gives every bucket a set (~200 bytes) though nearly all hold
    # one or two mentions; with this the index needs 3.9 KB per entry instead of 11.2 KB.
    SET_FROM = 16

    def __init__(self) -> None:
        self._buckets: dict[Any, Any] = {}

    def keys(self) -> Iterable[Any]:
        return self._buckets.keys()

    def get(self, key: Any) -> Any:
        value = self._buckets.get(key)
        if value is None:
            return ()
        return value if isinstance(value, (tuple, set)) else (value,)

    def insert(self, key: Any, *vals: Any, **_: Any) -> None:
        current = self._buckets.get(key)
        if current is None and len(vals) == 1:
            self._buckets[key] = vals[0]
            return
        if current is None:
            current = ()
        elif not isinstance(current, (tuple, set)):
            current = (current,)
        for val in vals:
            if isinstance(current, set):
                current.add(val)
            elif val not in current:
                current = (*current, val)
                if len(current) >= self.SET_FROM:
                    current = set(current)
        self._buckets[key] = current

    def remove(self, *keys: Any, **_: Any) -> None:
        for key in keys:
            self._buckets.pop(key, None)

    def remove_val(self, key: Any, val: Any, **_: Any) -> None:
        current = self._buckets.get(key)
        if current is None:
            return
        if isinstance(current, set):
            current.discard(val)
            left: Any = current
        elif isinstance(current, tuple):
            left = tuple(v for v in current if v != val)
        else:
            left = () if current == val else (current,)
        if not left:
            del self._buckets[key]
        elif len(left) == 1:
            self._buckets[key] = next(iter(left))
        else:
            self._buckets[key] = left

    def size(self) -> int:
        return len(self._buckets)

    def itemcounts(self, **_: Any) -> dict[Any, int]:
        return {key: len(self.get(key)) for key in self._buckets}

    def has_key(self, key: Any) -> bool:
        return key in self._buckets


@dataclass(slots=True)
class _Entry:
    incident_id: int
    content: str
    seen_at: float


@dataclass
class _SchoolIndex:
    lsh: MinHashLSH
    entries: dict[int, _Entry] = field(default_factory=dict)
    # (incident id, content) -> mention id: a repeat of a text already indexed for the same
    # incident only refreshes it, so a storm of identical retweets stays one entry.
    variants: dict[tuple[int, str], int] = field(default_factory=dict)
    # (seen_at, mention id); an entry seen again later is pushed back when it surfaces.
    expiry: list[tuple[float, int]] = field(default_factory=list)


class StoryIndex:
    """Per-school MinHash LSH over the content words of mentions that belong to incidents."""

    def __init__(self, settings: ClusteringSettings | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 school_names: Mapping[str, Iterable[str]] | None = None) -> None:
        self.settings = settings or ClusteringSettings()
        self.clock = clock
        # Every post in a school's index names the school: its name's words say nothing
        # about which story a post tells, and left in they make unrelated posts look alike.
        self.school_names = {school: name_words(names) for school, names in (school_names or {}).items()}
        self._schools: dict[str, _SchoolIndex] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(s.entries) for s in self._schools.values())

    def find(self, school_id: str, text: str) -> int | None:
        """The incident whose story ``text`` repeats, or None."""
        match = self.match(school_id, text)
        return match.incident_id if match else None

    def match(self, school_id: str, text: str) -> Match | None:
        """The best confirmed match for ``text`` among the school's recent mentions, or None."""
        content = self._content(school_id, text)
        if content is None:
            return None
        cfg = self.settings
        with self._lock:
            school = self._schools.get(school_id)
            if school is None:
                return None
            cutoff = self._cutoff()
            self._evict(school, cutoff)
            keys = school.lsh.query(_signature(content, cfg.shingle_size, cfg.num_perm))
            words: set[str] | None = None
            best: Match | None = None
            for key in heapq.nlargest(cfg.max_candidates, keys):
                entry = school.entries[key]
                if entry.seen_at < cutoff:
                    continue
                score = fuzz.token_set_ratio(content, entry.content, score_cutoff=cfg.confirm_ratio)
                if not score or (best and (score, key) <= (best.score, best.mention_id)):
                    continue
                # token_set_ratio is 100 when one text's words are all in the other: a short
                # post made of the school's name and two common words must share more than that.
                words = words if words is not None else set(content.split())
                if len(words.intersection(entry.content.split())) >= cfg.min_words:
                    best = Match(entry.incident_id, key, score)
            return best

    def add(self, mention_id: int, incident_id: int, school_id: str, text: str,
            seen_at: datetime) -> bool:
        """Index a mention of an incident; False when it is too short, too old or a repeat."""
        content = self._content(school_id, text)
        if content is None:
            return False
        stamp = as_utc(seen_at).timestamp()
        cfg = self.settings
        with self._lock:
            cutoff = self._cutoff()
            if stamp < cutoff:
                return False
            school = self._schools.get(school_id)
            if school is None:
                school = self._schools[school_id] = _SchoolIndex(lsh=_new_lsh(cfg))
            known = school.variants.get((incident_id, content))
            if known is not None:
                entry = school.entries[known]
                entry.seen_at = max(entry.seen_at, stamp)
                return False
            if mention_id in school.entries:
                return False
            school.lsh.insert(mention_id, _signature(content, cfg.shingle_size, cfg.num_perm),
                              check_duplication=False)
            entry = _Entry(incident_id, content, stamp)
            school.entries[mention_id] = entry
            school.variants[(incident_id, entry.content)] = mention_id
            heapq.heappush(school.expiry, (stamp, mention_id))
            return True

    def evict(self) -> int:
        """Drop entries last seen before the window; returns how many went."""
        with self._lock:
            cutoff = self._cutoff()
            return sum(self._evict(school, cutoff) for school in self._schools.values())

    def forget_incident(self, incident_id: int) -> int:
        """Drop every entry of an incident the store no longer has; returns how many went."""
        with self._lock:
            gone = 0
            for school in self._schools.values():
                for key in [k for k, e in school.entries.items() if e.incident_id == incident_id]:
                    self._remove(school, key)
                    gone += 1
            return gone

    def forget_mentions(self, mention_ids: Iterable[int]) -> int:
        """Drop the entries of deleted or erased mentions; returns how many went."""
        with self._lock:
            gone = 0
            for key in set(mention_ids):
                for school in self._schools.values():
                    if key in school.entries:
                        self._remove(school, key)
                        gone += 1
            return gone

    def forget_missing(self, engine: Engine) -> int:
        """Drop entries whose mention the store no longer has in that incident (erased, purged)."""
        with self._lock:
            indexed = {key: entry.incident_id for school in self._schools.values()
                       for key, entry in school.entries.items()}
        keys, stored = sorted(indexed), set()
        with engine.connect() as connection:
            for start in range(0, len(keys), REBUILD_BATCH):
                stored.update((mention_id, incident_id) for mention_id, incident_id in connection.execute(
                    select(MentionRow.id, MentionRow.incident_id)
                    .where(MentionRow.id.in_(keys[start:start + REBUILD_BATCH]))))
        # Pairs, not ids: SQLite hands a deleted row's id to the next row inserted.
        return self.forget_mentions(key for key in keys if (key, indexed[key]) not in stored)

    @classmethod
    def rebuild(cls, engine: Engine, settings: ClusteringSettings | None = None,
                clock: Callable[[], datetime] = utcnow,
                school_names: Mapping[str, Iterable[str]] | None = None) -> StoryIndex:
        """An index of the store's incident mentions fetched within the window, oldest first."""
        index = cls(settings, clock, school_names)
        since = clock() - timedelta(days=index.settings.window_days)
        last_id = 0
        with engine.connect() as connection:
            while True:
                rows = connection.execute(
                    select(MentionRow.id, MentionRow.incident_id, MentionRow.school_id,
                           MentionRow.title, MentionRow.text, MentionRow.fetched_at)
                    .where(MentionRow.id > last_id, MentionRow.incident_id.is_not(None),
                           MentionRow.fetched_at >= since)
                    .order_by(MentionRow.id).limit(REBUILD_BATCH)
                ).all()
                for mention_id, incident_id, school_id, title, text, fetched_at in rows:
                    index.add(mention_id, incident_id, school_id, story_text(title, text),
                              fetched_at)
                if len(rows) < REBUILD_BATCH:
                    return index
                last_id = rows[-1][0]

    def _content(self, school_id: str, text: str) -> str | None:
        cfg = self.settings
        skip = self.school_names.get(school_id, frozenset())
        # Enough words that the cap still holds max_words once the name's are gone.
        words = [w for w in _cached_words(text, 2 * cfg.max_words) if w not in skip][:cfg.max_words]
        return " ".join(words) if len(words) >= cfg.min_words else None

    def _cutoff(self) -> float:
        return (self.clock() - timedelta(days=self.settings.window_days)).timestamp()

    def _evict(self, school: _SchoolIndex, cutoff: float) -> int:
        gone = 0
        while school.expiry and school.expiry[0][0] < cutoff:
            stamp, key = heapq.heappop(school.expiry)
            entry = school.entries.get(key)
            if entry is None:
                continue
            if entry.seen_at > stamp:
                heapq.heappush(school.expiry, (entry.seen_at, key))
                continue
            self._remove(school, key)
            gone += 1
        return gone

    def _remove(self, school: _SchoolIndex, key: int) -> None:
        entry = school.entries.pop(key)
        school.variants.pop((entry.incident_id, entry.content), None)
        school.lsh.remove(key)


def _new_lsh(cfg: ClusteringSettings) -> MinHashLSH:
    # Band keys as crc32 ints rather than 12-byte strings: ~600 bytes less per entry, and
    # a 32-bit collision only adds a candidate that rapidfuzz then rejects.
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=_lsh_params(cfg.lsh_threshold, cfg.num_perm),
                     hashfunc=zlib.crc32)
    lsh.hashtables = [_Buckets() for _ in range(lsh.b)]
    return lsh


# --- transactions -------------------------------------------------------------------------

_STAGES = "schoolwatch.story_index.stages"


class StagedStories:
    """Index entries of one open transaction: findable inside it, published only once it commits."""

    def __init__(self, index: StoryIndex) -> None:
        self.index = index
        self.overlay = StoryIndex(index.settings, index.clock)
        self.overlay.school_names = index.school_names
        self.pending: list[tuple[int, int, str, str, datetime]] = []

    def match(self, school_id: str, text: str) -> Match | None:
        """The best match among committed entries and this transaction's own."""
        found = (self.index.match(school_id, text), self.overlay.match(school_id, text))
        return max((m for m in found if m), key=lambda m: (m.score, m.mention_id), default=None)

    def add(self, mention_id: int, incident_id: int, school_id: str, text: str,
            seen_at: datetime) -> None:
        """Stage an entry; the shared index sees it after commit."""
        self.overlay.add(mention_id, incident_id, school_id, text, seen_at)
        self.pending.append((mention_id, incident_id, school_id, text, seen_at))

    def publish(self) -> None:
        """Add the staged entries to the shared index."""
        for args in self.pending:
            self.index.add(*args)
        self.pending.clear()


def staged(session: Session, index: StoryIndex) -> StagedStories:
    """The staging area for ``index`` in ``session``'s current transaction."""
    stages: dict[int, StagedStories] | None = session.info.get(_STAGES)
    if stages is None:
        stages = session.info[_STAGES] = {}
        # A rolled-back transaction must leave nothing behind: its incident ids may be reused.
        event.listen(session, "after_commit", _publish_stages)
        event.listen(session, "after_transaction_end", _drop_stages)
    stage = stages.get(id(index))
    if stage is None:
        stage = stages[id(index)] = StagedStories(index)
    return stage


def _publish_stages(session: Session) -> None:
    for stage in (session.info.get(_STAGES) or {}).values():
        stage.publish()


def _drop_stages(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        (session.info.get(_STAGES) or {}).clear()

