"""Benchmark: end-to-end mentions/s, growth with store size, peak RSS, idle CPU of the daemon.

Run: python bench/pipeline.py [--quick] [all|throughput|growth|idle] [options]

Everything is the product's own code: the rss connector fetching generated feed pages from
an HTTP server on 127.0.0.1, monitor.pipeline.Runner (relevance, seen keys, classify,
incidents and near-duplicate clustering, evidence records, outbox rows, one transaction per
poll), a SQLite file store and the file email channel. Posts are labelled texts about
Harrowgate High School from classifiers/data (~70% benign, the rest reputational,
disparaging and safeguarding, plus retweets and re-shared links of recent flagged posts).

- throughput: the real classifier against ``instant``, a classifier that does no inference
  and answers each post with the label it was generated with, so both runs do the same
  clustering, storing and mailing and the difference is the model. Each run is its own
  process, so its peak RSS is its own.
- growth: the cost per mention of one fixed fresh batch when the store already holds
  10k, 100k and 1M mentions, with ``instant`` so the model does not drown the store.
- idle: CPU of ``python -m monitor run`` between polls against an idle sleeping process.

Figures are ratios against baselines measured in the same run; absolute numbers depend on
the machine and its load, and no test asserts them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import load_line, peak_rss_mb, print_rows  # noqa: E402
# The tests' school (Harrowgate, its aliases, exclusions and recipients) is the bench's too.
from tests.support.configs import SCHOOL as SCHOOL_TOML  # noqa: E402
from tests.support.http_server import RecordedServer, Reply  # noqa: E402

SCHOOL_ID = "harrowgate"
# Share of posts per kind; "repeat" re-posts a recent flagged post (a retweet or its link).
MIX = {"none": 0.70, "reputational": 0.09, "disparaging": 0.07, "safeguarding": 0.06,
       "repeat": 0.08}
SOURCE_ID = "bench-feed"
RESULT = "RESULT "


# --- the stream of posts -------------------------------------------------------------------

@dataclass(frozen=True)
class Post:
    """One generated feed entry and the verdict it was written to get."""

    index: int  # position in its stream
    guid: str
    url: str
    title: str | None
    text: str
    author: str
    label: str
    severity: str | None
    subtype: str | None
    repeat_of: int | None  # index in the stream of the post this one repeats


def labelled_texts() -> dict[str, list[dict[str, Any]]]:
    """Labelled texts from classifiers/data that the school's relevance matcher accepts."""
    from monitor.relevance import SchoolMatcher

    matcher = SchoolMatcher.build("Harrowgate High School", ["Harrowgate High", "HHS"],
                                  ["@HarrowgateHigh"], ["Harrowgate High Street"])
    by_label: dict[str, list[dict[str, Any]]] = {}
    for name in ("train.jsonl", "train_extra.jsonl", "dev.jsonl"):
        path = ROOT / "classifiers" / "data" / name
        for line in path.read_text().splitlines() if path.is_file() else []:
            row = json.loads(line)
            if matcher.matches(row["text"]):
                by_label.setdefault(row["label"], []).append(row)
    return by_label


class Stream:
    """A deterministic stream of posts about the school; ``take`` continues where it stopped."""

    def __init__(self, seed: int, prefix: str, texts: dict[str, list[dict[str, Any]]]) -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.texts = texts
        self.count = 0
        self.recent_flagged: deque[Post] = deque(maxlen=200)
        self.kinds = list(MIX)
        self.weights = list(MIX.values())

    def take(self, n: int) -> list[Post]:
        """The next ``n`` posts."""
        return [self._next() for _ in range(n)]

    def _next(self) -> Post:
        index, self.count = self.count, self.count + 1
        guid = f"{self.prefix}-{index:08d}"
        kind = self.rng.choices(self.kinds, self.weights)[0]
        author = f"u{self.rng.randrange(10**6)}"
        if kind == "repeat" and self.recent_flagged:
            # Recent stories are the ones repeated; a few become storms.
            back = min(int(self.rng.expovariate(1 / 20)), len(self.recent_flagged) - 1)
            original = self.recent_flagged[-1 - back]
            if self.rng.random() < 0.5:
                url = f"https://social.example/{author}/{guid}"
                text = f"RT @{original.author}: {original.text}"
            else:  # the same link shared again, with tracking parameters
                url, text = f"{original.url}?utm_source=share&utm_medium={author}", original.text
            return Post(index, guid, url, original.title, text, author, original.label,
                        original.severity, original.subtype, original.index)
        row = self.rng.choice(self.texts["none" if kind == "repeat" else kind])
        text, title = row["text"], None
        if row.get("register") == "news":
            title = " ".join(text.split()[:9])
        elif self.rng.random() < 0.5:  # a reply: distinct posts, not copies of one text
            text = f"@{author} {text}"
        post = Post(index, guid, f"https://social.example/{author}/{guid}", title, text, author,
                    row["label"], row.get("severity"), row.get("subtype"), None)
        if post.label != "none":
            self.recent_flagged.append(post)
        return post


def rss_page(posts: Sequence[Post], published: datetime) -> bytes:
    """An RSS 2.0 document holding ``posts``, newest first, one minute apart."""
    items = []
    for n, post in enumerate(reversed(posts)):
        when = format_datetime(published - timedelta(minutes=n))
        title = f"<title>{escape(post.title)}</title>" if post.title else ""
        items.append(f'<item><guid isPermaLink="false">{post.guid}</guid>'
                     f"<link>{escape(post.url)}</link>{title}"
                     f"<description>{escape(post.text)}</description>"
                     f"<author>{post.author}@social.example ({post.author})</author>"
                     f"<pubDate>{when}</pubDate></item>")
    return ('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
            "<title>Harrowgate mentions</title><link>https://social.example/</link>"
            "<description>bench</description>" + "".join(items)
            + "</channel></rss>").encode()


def paginate(posts: Sequence[Post], low: int, high: int, seed: int) -> list[list[Post]]:
    """``posts`` in consecutive pages of ``low`` to ``high`` posts."""
    rng, pages, start = random.Random(seed), [], 0
    while start < len(posts):
        size = rng.randint(low, high)
        pages.append(list(posts[start:start + size]))
        start += size
    return pages


# --- real parts: feed server, config, classifiers -------------------------------------------

@contextmanager
def serve_feeds(pages: dict[str, list[bytes]]) -> Iterator[RecordedServer]:
    """Each path's pages in turn on 127.0.0.1 (a fresh ETag each), then 304 for the last one."""
    server = RecordedServer().start()
    for path, documents in pages.items():
        server.route(path, *(Reply(body=doc, etag=f'"page-{i}"', content_type="application/rss+xml")
                             for i, doc in enumerate(documents)))
    try:
        yield server
    finally:
        server.stop()


def write_config(folder: Path, feed_url: str, classifier: str, interval: str = "1h",
                 jitter: str = "30s") -> Path:
    """A config with the school, one rss source, a SQLite file store and the file channel."""
    text = (f'[store]\nurl = "sqlite:///{folder / "store.db"}"\n\n'
            f'[classifier]\nname = "{classifier}"\n\n'
            '[email]\nsender = "Schoolwatch <alerts@harrowgate.example.sch.uk>"\n'
            f'backend = "file"\noutbox_dir = "{folder / "outbox"}"\n\n'
            f'[scheduler]\njitter = "{jitter}"\n\n'
            '[admin]\nrecipients = ["it@harrowgate.example.sch.uk"]\n'
            f"{SCHOOL_TOML}\n"
            f'[[sources]]\nid = "{SOURCE_ID}"\nschool = "{SCHOOL_ID}"\nconnector = "rss"\n'
            f'interval = "{interval}"\noptions = {{ url = "{feed_url}" }}\n')
    path = folder / "config.toml"
    path.write_text(text)
    return path


def instant_classifier(posts: Sequence[Post]) -> Any:
    """A classifier that does no inference: each post gets the label it was generated with."""
    from pydantic import BaseModel

    from classifiers.base import Assessment, Category, Classifier, ClassifierInput
    from monitor.dedupe import normalised_text

    verdicts = {}
    for post in posts:
        category = Category(post.label)
        verdicts[normalised_text(post.text)] = Assessment(
            category=category, severity=post.severity if category is not Category.NONE else None,
            subtype=post.subtype if category is Category.SAFEGUARDING else None,
            scores={c: float(c == post.label) for c in ("safeguarding", "disparaging", "reputational")},
            reasons=[f"generated as {post.label}"] if category is not Category.NONE else [],
            classifier="instant")
    none = Assessment(category=Category.NONE, classifier="instant")

    class InstantConfig(BaseModel):
        """No options."""

    class InstantClassifier(Classifier):
        """Answers from a dict built in advance; the model's place in the pipeline, at no cost."""

        name = "instant"
        Config = InstantConfig

        def classify(self, items: Sequence[ClassifierInput]) -> list[Assessment]:
            """The generated label of each item, in order."""
            return [verdicts.get(normalised_text(item.text), none) for item in items]

    return InstantClassifier()


class Stopwatch:
    """Adds up the seconds spent inside the functions it wraps."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed


def deliver_all(runner: Any) -> int:
    """Deliver the outbox until nothing due is left, as ``run --once`` does; messages sent."""
    sent = 0
    while (report := runner.deliver_outbox()).sent:
        sent += report.sent
    return sent


def store_counts(url: str) -> dict[str, int]:
    """Row counts of the tables the pipeline writes."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        count = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        return {"mentions": count("SELECT count(*) FROM mention"),
                "seen_keys": count("SELECT count(*) FROM seen_key"),
                "flagged": count("SELECT count(*) FROM assessment WHERE category != 'none'"),
                "incidents": count("SELECT count(*) FROM incident"),
                "evidence": count("SELECT count(*) FROM evidence_item"),
                "outbox": count("SELECT count(*) FROM outbox"),
                "outbox_sent": count("SELECT count(*) FROM outbox WHERE status = 'sent'")}


# --- throughput -------------------------------------------------------------------------------

def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """One end-to-end pass over ``args.mentions`` posts with one classifier; its figures."""
    started = time.perf_counter()
    from monitor.config import load_config
    from monitor.pipeline import Runner

    import_s = time.perf_counter() - started
    texts = labelled_texts()
    posts = Stream(args.seed, "post", texts).take(args.mentions)
    pages = paginate(posts, args.page_min, args.page_max, args.seed)
    now = datetime.now(UTC)
    documents = [rss_page(page, now - timedelta(minutes=5 * (len(pages) - n)))
                 for n, page in enumerate(pages)]
    load_s = 0.0
    if args.classifier == "instant":
        classifier = instant_classifier(posts)
    else:
        from classifiers.evaluate import load_classifier

        started = time.perf_counter()
        classifier = load_classifier(args.classifier)
        from classifiers.base import ClassifierInput

        classifier.classify([ClassifierInput(text=p.text) for p in posts[:8]])  # warm-up
        load_s = time.perf_counter() - started
    classify_clock, fetch_clock, outbox_clock = Stopwatch(), Stopwatch(), Stopwatch()
    classifier.classify = classify_clock.wrap(classifier.classify)
    with tempfile.TemporaryDirectory() as folder, serve_feeds({"/feed.xml": documents}) as server:
        settings = load_config(write_config(Path(folder), f"{server.url}/feed.xml", "rules"))
        runner = Runner(settings, classifier=classifier)
        connector = runner.connector(settings.source(SOURCE_ID))
        connector.fetch = fetch_clock.wrap(connector.fetch)
        deliver = outbox_clock.wrap(deliver_all)
        statuses: list[str] = []
        started = time.perf_counter()
        for _ in documents:
            statuses.append(runner.poll(SOURCE_ID, force=True).status)
            deliver(runner)
        total_s = time.perf_counter() - started
        runner.close()
        counts = store_counts(settings.store.url)
        emails = len(list((Path(folder) / "outbox").glob("*.eml")))
    return {
        "classifier": args.classifier, "served": len(posts), "pages": len(pages),
        "polls_failed": sum(s != "ok" for s in statuses),
        "generated_flagged": sum(p.label != "none" for p in posts), **counts, "emails": emails,
        "import_s": import_s, "load_s": load_s, "total_s": total_s,
        "classify_s": classify_clock.seconds, "fetch_s": fetch_clock.seconds,
        "outbox_s": outbox_clock.seconds, "rate": len(posts) / total_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def throughput_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The table of one throughput pass."""
    rest = r["total_s"] - r["classify_s"] - r["fetch_s"] - r["outbox_s"]
    share = lambda s: f"{s:6.2f} s ({s / r['total_s']:.0%})"  # noqa: E731
    return [
        ("classifier", r["classifier"]),
        ("mentions served / stored", f"{r['served']} in {r['pages']} pages / {r['mentions']}"
                                     f" ({r['polls_failed']} polls failed)"),
        ("flagged (generated as flagged)", f"{r['flagged']} ({r['generated_flagged']})"),
        ("incidents, outbox rows, .eml files", f"{r['incidents']}, {r['outbox']}, {r['emails']}"),
        ("model load + warm-up", f"{r['load_s']:.2f} s (not in the rate)"),
        ("end to end", f"{r['rate']:8.1f} mentions/s ({r['total_s']:.1f} s)"),
        ("  fetch (HTTP + feedparser)", share(r["fetch_s"])),
        ("  classify", share(r["classify_s"])),
        ("  store, cluster, evidence, queue", share(rest)),
        ("  outbox delivery (file channel)", share(r["outbox_s"])),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB"),
    ]


# --- growth -----------------------------------------------------------------------------------

DAY = 86400.0
SEED_BATCH = 20_000
EVIDENCE_BYTES = 800  # a mention's canonical JSON record
OUTBOX_BODY = "x" * 1500  # an alert's plain text; its HTML is about three times that


def _stamp(seconds: float) -> str:
    """A datetime column value as SQLAlchemy writes it on SQLite (naive UTC)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class SeedWriter:
    """Bulk-inserts rows shaped as the pipeline writes them, straight through sqlite3."""

    def __init__(self, db: sqlite3.Connection, now: datetime) -> None:
        self.db = db
        self.end = now.timestamp()
        self.mention = self.incident = 0
        # Stream index of a flagged post -> its incident, so repeats join their original's.
        self.incident_of: dict[int, int] = {}

    def write(self, posts: Sequence[Post], stamps: Sequence[float], exact_keys: bool) -> None:
        """Store ``posts`` fetched at ``stamps``; ``exact_keys`` computes the real dedupe keys.

        Old mentions never meet a fresh post's keys, so a plain hash of their text keeps
        the index shape at a fraction of the cost.
        """
        from monitor.dedupe import canonical_url, text_hash

        mentions, verdicts, seen, incidents, evidence, outbox = [], [], [], [], [], []
        for post, stamp in zip(posts, stamps, strict=True):
            self.mention += 1
            mid, at, flagged = self.mention, _stamp(stamp), post.label != "none"
            incident = self.incident_of.get(post.repeat_of) if post.repeat_of is not None else None
            if incident is None and flagged:
                self.incident += 1
                incident = self.incident
                incidents.append((incident, SCHOOL_ID, post.label, post.severity, post.subtype,
                                  "open", post.text[:160], at, at, 1, '["rss"]', 0, 0, 0, None))
                if self.end - stamp < 90 * DAY:  # older sent mail is purged by retention
                    safeguarding = post.label == "safeguarding"
                    role, who = ("dsl", "dsl") if safeguarding else ("headteacher", "head")
                    outbox.append((f"alert:{incident}:0:email:{who}", "alert", incident, SCHOOL_ID,
                                   role, "file", f"{who}@harrowgate.example.sch.uk",
                                   "Schoolwatch <alerts@harrowgate.example.sch.uk>",
                                   f"[{post.label}] Harrowgate High School", OUTBOX_BODY,
                                   OUTBOX_BODY * 3, f"<{incident}.seed@bench>", "{}", "{}", "sent",
                                   1, at, None, at, at, None))
            if flagged:
                self.incident_of[post.index] = incident
            if incident is not None:
                digest = hashlib.sha256(post.guid.encode()).hexdigest()
                evidence.append((mid, incident, "record", digest, EVIDENCE_BYTES, "application/json",
                                 OUTBOX_BODY[:EVIDENCE_BYTES].encode(), post.url, at, None))
            if exact_keys:
                url, hashed = canonical_url(post.url), text_hash(post.text)
            else:
                url, hashed = post.url, hashlib.sha256(post.text.encode()).hexdigest()
            mentions.append((mid, "rss", post.guid, "seed", SCHOOL_ID, post.url, url, post.author,
                             post.title, post.text, hashed, at, at,
                             f'{{"id": "{post.guid}"}}' if flagged else None, incident))
            verdicts.append((mid, mid, "instant", post.label, post.severity, post.subtype,
                             '{"safeguarding": 0.0, "disparaging": 0.0, "reputational": 0.0}',
                             f'["generated as {post.label}"]' if flagged else "[]", at))
            seen.append(("rss", post.guid, "seed", 1, at))
            if mid % 2 == 0:  # an item fetched that was not about the school: its key only
                seen.append(("rss", f"{post.guid}-other", "seed", 0, at))
        self._insert("incident", "id, school_id, category, severity, subtype, status, title, "
                     "first_seen, last_seen, mention_count, platforms, revision, escalation_level, "
                     "legal_hold, legal_hold_reason", incidents)
        self._insert("mention", "id, platform, external_id, source_id, school_id, url, "
                     "canonical_url, author, title, text, text_hash, published_at, fetched_at, "
                     "raw, incident_id", mentions)
        self._insert("assessment", "id, mention_id, classifier, category, severity, subtype, "
                     "scores, reasons, created_at", verdicts)
        self._insert("seen_key", "platform, external_id, source_id, relevant, seen_at", seen)
        self._insert("evidence_item", "mention_id, incident_id, kind, sha256, size, media_type, "
                     "content, source_url, captured_at, note", evidence)
        self._insert("outbox", "dedupe_key, kind, incident_id, school_id, role, channel, "
                     "recipient, sender, subject, body_text, body_html, message_id, headers, "
                     "images, status, attempts, next_attempt_at, last_error, created_at, "
                     "sent_at, leased_until", outbox)

    def _insert(self, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
        marks = ",".join("?" * len(columns.split(",")))
        self.db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)


def seed_store(url: str, old: Stream, old_count: int, recent: Sequence[Post],
               now: datetime) -> float:
    """Fill an empty store with ``old_count`` old mentions, then ``recent``; seconds taken.

    Old mentions are spread over the two years before the 14-day story window, the recent
    ones over the window. One transaction; secondary indexes are dropped and rebuilt
    afterwards, as a bulk load would.
    """
    import monitor.evidence.model  # noqa: F401  (registers the evidence table)
    from monitor.store import init_db, make_engine

    started = time.perf_counter()
    engine = make_engine(url)
    init_db(engine)
    engine.dispose()
    db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                         "AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    db.execute("BEGIN")
    writer = SeedWriter(db, now)
    old_end, old_span = now.timestamp() - 15 * DAY, 730 * DAY
    done = 0
    while done < old_count:
        chunk = old.take(min(SEED_BATCH, old_count - done))
        writer.write(chunk, [old_end - old_span * (1 - (done + i) / old_count)
                             for i in range(len(chunk))], exact_keys=False)
        done += len(chunk)
    writer.incident_of = {}
    window_start = now.timestamp() - 13 * DAY
    writer.write(recent, [window_start + 13 * DAY * i / len(recent) for i in range(len(recent))],
                 exact_keys=True)
    db.execute("COMMIT")
    for _, sql in indexes:
        db.execute(sql)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - started


def run_growth(args: argparse.Namespace) -> dict[str, Any]:
    """The cost per mention of one fresh batch against stores of each size; the figures."""
    from monitor.config import load_config
    from monitor.pipeline import Runner

    texts = labelled_texts()
    now = datetime.now(UTC)
    stream = Stream(args.seed + 1, "recent", texts)
    recent = stream.take(args.recent)
    warm = stream.take(20)
    batch = stream.take(args.batch)
    pages = paginate(batch, args.page_min, args.page_max, args.seed)
    documents = [rss_page(warm, now - timedelta(hours=1))] + [
        rss_page(page, now - timedelta(minutes=5 * (len(pages) - n))) for n, page in enumerate(pages)]
    classifier = instant_classifier([*recent, *warm, *batch])
    sizes = sorted(args.sizes)
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder, \
            serve_feeds({f"/feed-{n}.xml": documents for n in sizes}) as server:
        runners = {}
        for n in sizes:
            directory = Path(folder) / str(n)
            directory.mkdir()
            settings = load_config(write_config(directory, f"{server.url}/feed-{n}.xml", "rules"))
            seed_s = seed_store(settings.store.url, Stream(args.seed + 2, "old", texts),
                                n - len(recent), recent, now)
            before = store_counts(settings.store.url)
            runner = Runner(settings, classifier=classifier)
            started = time.perf_counter()
            entries = len(runner.story_index)
            rebuild_s = time.perf_counter() - started
            runner.poll(SOURCE_ID, force=True)  # warm-up page: connector, caches, statements
            deliver_all(runner)
            runners[n] = runner
            size_mb = sum(f.stat().st_size for f in directory.glob("store.db*")) / 2**20
            results[n] = {"seed_s": seed_s, "rebuild_s": rebuild_s, "entries": entries,
                          "before": before, "db_mb": size_mb, "seconds": 0.0}
            print(f"  seeded {n} mentions in {seed_s:.1f} s ({size_mb:.0f} MB); story index "
                  f"{entries} entries rebuilt in {rebuild_s:.2f} s", flush=True)
        # Alternate the order page by page so a burst of load elsewhere hits every size.
        for k in range(len(pages)):
            for n in sizes if k % 2 == 0 else reversed(sizes):
                started = time.perf_counter()
                runners[n].poll(SOURCE_ID, force=True)
                deliver_all(runners[n])
                results[n]["seconds"] += time.perf_counter() - started
        for n, runner in runners.items():
            runner.close()
            results[n]["after"] = store_counts(runner.settings.store.url)
            results[n]["us"] = results[n]["seconds"] / len(batch) * 1e6
    return {"sizes": sizes, "batch": len(batch), "warm": len(warm), "pages": len(pages),
            "recent": len(recent),
            "results": {str(n): r for n, r in results.items()}}


def growth_rows(g: dict[str, Any]) -> list[tuple[str, str]]:
    """The table of the growth run."""
    sizes = g["sizes"]
    base = g["results"][str(sizes[0])]["us"]
    rows = [("batch", f"{g['batch']} fresh mentions in {g['pages']} pages, classifier 'instant' "
                      "(no model: the store's cost is what grows)")]
    for n in sizes:
        r = g["results"][str(n)]
        b, a = r["before"], r["after"]
        rows.append((f"store of {n:,} mentions",
                     f"{1e6 / r['us']:7.1f} mentions/s, {r['us'] / 1000:6.2f} ms/mention, "
                     f"x{r['us'] / base:.2f} of {sizes[0]:,}; +{a['mentions'] - b['mentions']} "
                     f"mentions ({g['warm']} of them a warm-up page, not timed), "
                     f"+{a['incidents'] - b['incidents']} incidents, "
                     f"+{a['outbox'] - b['outbox']} outbox rows"))
    for n in sizes:
        r = g["results"][str(n)]
        b = r["before"]
        rows.append((f"  seeded {n:,}",
                     f"{r['seed_s']:.1f} s, {r['db_mb']:.0f} MB: {b['seen_keys']:,} seen keys, "
                     f"{b['flagged']:,} flagged, {b['incidents']:,} incidents, {b['evidence']:,} "
                     f"evidence records, {b['outbox']:,} sent alerts; index rebuild "
                     f"{r['rebuild_s']:.2f} s for {r['entries']} entries"))
    for n in sizes[1:]:
        rows.append((f"per-mention cost {_short(n)}/{_short(sizes[0])}",
                     f"{g['results'][str(n)]['us'] / base:.2f}  (1.00 = flat)"))
    rows.append(("seeded data", f"the newest {g['recent']:,} mentions spread over the 14-day "
                                "story window (the batch repeats some of them), the rest over the "
                                "two years before it; ~70% benign, flagged ones in incidents, "
                                "one evidence record per incident mention, sent alerts for the "
                                "last 90 days"))
    return rows


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else str(n))


# --- idle -------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> str:
    """A field of /proc/<pid>/status (VmHWM, Threads)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    return "?"


def first_poll_done(url: str) -> bool:
    """The source has a successful poll stored and no alert is waiting to be sent."""
    path = url.removeprefix("sqlite:///")
    if not Path(path).exists():
        return False
    try:
        with sqlite3.connect(path, timeout=5) as db:
            polled = db.execute("SELECT count(*) FROM source_state WHERE last_success_at IS NOT NULL"
                                ).fetchone()[0]
            pending = db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        return bool(polled) and not pending
    except sqlite3.OperationalError:  # tables not created yet
        return False


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """CPU of the real daemon between polls, and of an idle sleeping process over the same time."""
    from monitor.config import load_config

    posts = Stream(args.seed + 3, "idle", labelled_texts()).take(args.page_max)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as folder, \
            serve_feeds({"/feed.xml": [rss_page(posts, datetime.now(UTC))]}) as server:
        config = write_config(Path(folder), f"{server.url}/feed.xml", args.classifier,
                              interval="1h", jitter="0s")
        url = load_config(config).store.url
        log_path = Path(folder) / "daemon.log"
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            daemon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
            baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(86400)"])
            try:
                while not first_poll_done(url):
                    if daemon.poll() is not None or time.perf_counter() - started > args.idle_timeout:
                        raise RuntimeError("the daemon did not finish its first poll:\n"
                                           + log_path.read_text()[-3000:])
                    time.sleep(0.2)
                first_poll_s = time.perf_counter() - started
                time.sleep(args.settle)
                daemon_cpu, baseline_cpu = cpu_seconds(daemon.pid), cpu_seconds(baseline.pid)
                window = time.perf_counter()
                time.sleep(args.idle_seconds)
                daemon_cpu = cpu_seconds(daemon.pid) - daemon_cpu
                baseline_cpu = cpu_seconds(baseline.pid) - baseline_cpu
                window = time.perf_counter() - window
                peak_mb = int(proc_status(daemon.pid, "VmHWM").split()[0]) / 1024
                threads = proc_status(daemon.pid, "Threads")
            finally:
                baseline.kill()
                baseline.wait()
                daemon.send_signal(signal.SIGTERM)
                try:
                    exit_code = daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    exit_code = daemon.wait()
        counts = store_counts(url)
    return {"classifier": args.classifier, "first_poll_s": first_poll_s, "window_s": window,
            "daemon_cpu_s": daemon_cpu, "baseline_cpu_s": baseline_cpu,
            "daemon_pct": 100 * daemon_cpu / window, "baseline_pct": 100 * baseline_cpu / window,
            "daemon_peak_rss_mb": peak_mb, "threads": threads, "exit_code": exit_code,
            "served": len(posts), **counts}


def idle_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The table of the idle run."""
    return [
        ("daemon", f"python -m monitor run, classifier {r['classifier']}, one rss source every "
                   f"1h, outbox every 1m, escalation check every 1m"),
        ("first poll done after start", f"{r['first_poll_s']:.1f} s ({r['mentions']} of "
                                        f"{r['served']} mentions stored, {r['outbox_sent']} alerts sent)"),
        ("idle CPU, daemon", f"{r['daemon_pct']:.3f}% of one core ({r['daemon_cpu_s']:.2f} s "
                             f"over {r['window_s']:.0f} s, one clock tick = "
                             f"{100 / os.sysconf('SC_CLK_TCK') / r['window_s']:.3f}%; "
                             f"{r['threads']} threads)"),
        ("idle CPU, sleeping python (baseline)",
         f"{r['baseline_pct']:.3f}% of one core ({r['baseline_cpu_s']:.2f} s)"),
        ("daemon peak RSS (VmHWM)", f"{r['daemon_peak_rss_mb']:.0f} MB"),
        ("daemon exit on SIGTERM", str(r["exit_code"])),
    ]


# --- the whole run ---------------------------------------------------------------------------

def child_throughput(args: argparse.Namespace, classifier: str) -> dict[str, Any]:
    """A throughput pass in a process of its own, so its peak RSS is its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "throughput", "--json",
               "--classifier", classifier, "--mentions", str(args.mentions),
               "--page-min", str(args.page_min), "--page-max", str(args.page_max),
               "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        raise RuntimeError(f"throughput with {classifier} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every benchmark; prints each table as it finishes."""
    runs: dict[str, list[dict[str, Any]]] = {"instant": [], args.classifier: []}
    for _ in range(args.repeat):
        # Interleaved, best of each: a burst of load elsewhere is less likely to hit one side.
        for name in runs:
            runs[name].append(child_throughput(args, name))
    best = {name: max(results, key=lambda r: r["rate"]) for name, results in runs.items()}
    model, instant = best[args.classifier], best["instant"]
    for result in (model, instant):
        print(f"\nthroughput, best of {args.repeat}:")
        print_rows(throughput_rows(result), "  ")
    print("\ngrowth:", flush=True)
    growth = run_growth(args)
    print_rows(growth_rows(growth), "  ")
    print("\nidle daemon:", flush=True)
    idle = run_idle(args)
    print_rows(idle_rows(idle), "  ")

    share = 1 - instant["total_s"] / model["total_s"]
    sizes = growth["sizes"]
    base = growth["results"][str(sizes[0])]["us"]
    summary = [
        (f"end to end, {args.classifier}", f"{model['rate']:.1f} mentions/s"),
        ("end to end, instant (no model)", f"{instant['rate']:.1f} mentions/s"),
        ("rate ratio instant / model", f"{instant['rate'] / model['rate']:.2f}x"),
        ("classification share of time", f"{share:.0%} from the two runs; "
                                          f"{model['classify_s'] / model['total_s']:.0%} "
                                          "timed inside classify()"),
        (f"peak RSS, {args.classifier} run", f"{model['peak_rss_mb']:.0f} MB "
                                             f"(instant run {instant['peak_rss_mb']:.0f} MB)"),
        *[(f"per-mention cost {_short(n)}/{_short(sizes[0])} stored",
           f"{growth['results'][str(n)]['us'] / base:.2f}") for n in sizes[1:]],
        ("daemon peak RSS after its first poll", f"{idle['daemon_peak_rss_mb']:.0f} MB"),
        ("idle CPU, daemon / sleeping python",
         f"{idle['daemon_pct']:.3f}% / {idle['baseline_pct']:.3f}% of one core"),
        ("load average (1 min)", load_line()),
    ]
    print("\nsummary:")
    print_rows(summary, "  ")
    return {"throughput": best, "growth": growth, "idle": idle}


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the chosen benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="all", choices=["all", "throughput", "growth", "idle"])
    p.add_argument("--quick", action="store_true",
                   help="fewer mentions, stores of 10k and 100k only, a 10 s idle window")
    p.add_argument("--classifier", default="ensemble",
                   help="the real classifier plugin (ensemble, transformer; rules has no model); "
                        "throughput also takes 'instant'")
    p.add_argument("--mentions", type=int, help="mentions per throughput run (default 2000, quick 500)")
    p.add_argument("--page-min", type=int, default=50)
    p.add_argument("--page-max", type=int, default=100)
    p.add_argument("--repeat", type=int, default=1,
                   help="throughput runs per classifier, interleaved, best kept")
    p.add_argument("--sizes", help="stored mentions to compare, comma-separated "
                                   "(default 10000,100000,1000000; quick 10000,100000)")
    p.add_argument("--batch", type=int, default=100,
                   help="fresh mentions timed per store (at 1M stored each takes seconds)")
    p.add_argument("--recent", type=int, default=5000,
                   help="seeded mentions inside the 14-day story window, the same in every store")
    p.add_argument("--idle-seconds", type=float, help="idle window measured (default 30, quick 10)")
    p.add_argument("--idle-timeout", type=float, default=300, help="wait for the first poll at most")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds after the first poll before measuring")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", action="store_true", help="also print a RESULT line of JSON")
    args = p.parse_args(argv)
    quick = args.quick
    args.mentions = args.mentions or (500 if quick else 2000)
    args.sizes = [int(s) for s in (args.sizes or ("10000,100000" if quick else
                                                  "10000,100000,1000000")).split(",")]
    args.idle_seconds = args.idle_seconds or (10 if quick else 30)
    if min(args.sizes) < args.recent:
        p.error(f"--sizes must be at least --recent ({args.recent})")
    if args.what == "all":
        result = run_all(args)
    elif args.what == "throughput":
        result = run_throughput(args)
        print_rows(throughput_rows(result))
    elif args.what == "growth":
        result = run_growth(args)
        print_rows(growth_rows(result))
    else:
        result = run_idle(args)
        print_rows(idle_rows(result))
    if args.what != "all":
        print(f"load average (1 min): {load_line()}")
    if args.json:
        print(RESULT + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
