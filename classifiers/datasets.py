"""Labelled data: the product's own JSONL sets and public datasets mapped onto the taxonomy."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.base import Category, Severity, Subtype

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = PACKAGE_DIR / "data"
TRAIN_PATH = DATA_DIR / "train.jsonl"
DEV_PATH = DATA_DIR / "dev.jsonl"
# Every file training reads: train.jsonl plus the sets added since (train_extra.jsonl, ...).
TRAIN_GLOB = "train*.jsonl"


def train_files(data_dir: Path = DATA_DIR) -> list[Path]:
    """The labelled training files in ``data_dir``, sorted; never the held-out set."""
    return sorted(p for p in data_dir.glob(TRAIN_GLOB)
                  if p.is_file() and p.resolve() != DEV_PATH.resolve())


@dataclass(frozen=True)
class Example:
    """One labelled text; ``source`` says where it came from, ``group`` is for CV splits."""

    text: str
    label: Category
    subtype: Subtype | None = None
    severity: Severity | None = None
    also_ok: tuple[Category, ...] = ()
    hard_negative: bool = False
    source: str = "product"
    group: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def accepts(self, predicted: Category) -> bool:
        """True when ``predicted`` is the label or one of the also-acceptable labels."""
        return predicted == self.label or predicted in self.also_ok


class DataError(ValueError):
    """A labelled file has a line that does not follow GUIDELINES.md."""


def _optional(enum: type, value: object, where: str) -> object:
    if value in (None, ""):
        return None
    try:
        return enum(value)
    except ValueError:
        raise DataError(f"{where}: unknown value {value!r}") from None


def parse_line(obj: dict, where: str = "") -> Example:
    """One JSONL object as an Example; raises DataError on a bad label."""
    if not isinstance(obj.get("text"), str) or "label" not in obj:
        raise DataError(f"{where}: needs 'text' and 'label'")
    label = _optional(Category, obj["label"], where)
    if label is None:
        raise DataError(f"{where}: empty label")
    also = tuple(_optional(Category, x, where) for x in obj.get("also_ok") or ())
    return Example(
        text=obj["text"],
        label=label,  # type: ignore[arg-type]
        subtype=_optional(Subtype, obj.get("subtype"), where),  # type: ignore[arg-type]
        severity=_optional(Severity, obj.get("severity"), where),  # type: ignore[arg-type]
        also_ok=also,  # type: ignore[arg-type]
        hard_negative=bool(obj.get("hard_negative", False)),
        extra={k: v for k, v in obj.items() if k in ("register",)},
    )


def load_jsonl(path: Path | str, source: str = "product") -> list[Example]:
    """Read a labelled JSONL file (GUIDELINES.md); blank lines are skipped."""
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not JSON ({exc.msg})") from None
            ex = parse_line(obj, where)
            examples.append(Example(**{**ex.__dict__, "source": source}))
    return examples


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def datasets_dir() -> Path:
    """Public datasets folder, read in place: $SCHOOLWATCH_DATASETS or <repo>/../shared/datasets."""
    env = os.environ.get("SCHOOLWATCH_DATASETS")
    return Path(env) if env else REPO_DIR.parent / "shared" / "datasets"


# --- public datasets --------------------------------------------------------------------

@dataclass(frozen=True)
class PublicSource:
    """One public file, how its labels map onto the taxonomy, and its README row key."""

    name: str
    readme_key: str
    mapping: dict[str, tuple[Category, Subtype | None] | None]
    read: Callable[[Path], Iterator[tuple[str, str]]]
    note: str = ""


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _tweeteval(task: str, split: str = "train") -> Callable[[Path], Iterator[tuple[str, str]]]:
    def read(root: Path) -> Iterator[tuple[str, str]]:
        folder = root / "tweeteval" / task
        texts = _lines(folder / f"{split}_text.txt")
        labels = _lines(folder / f"{split}_labels.txt")
        yield from zip(texts, (x.strip() for x in labels))

    return read


def _csv(rel: str, text_col: str | int, label_col: str | int, header: bool = True):
    def read(root: Path) -> Iterator[tuple[str, str]]:
        with (root / rel).open(encoding="utf-8", errors="replace", newline="") as fh:
            rows: Iterable = csv.DictReader(fh) if header else csv.reader(fh)
            for row in rows:
                yield str(row[text_col]), str(row[label_col]).strip()

    return read


def _sdcnl(root: Path) -> Iterator[tuple[str, str]]:
    for part in ("training", "testing"):
        with (root / "selfharm" / f"sdcnl_{part}-set.csv").open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                yield f"{row['title']}\n{row['selftext']}".strip(), row["is_suicide"].strip()


SG = Category.SAFEGUARDING
PUBLIC_SOURCES: tuple[PublicSource, ...] = (
    PublicSource(
        "tweeteval-offensive", "tweeteval/",
        {"1": (Category.DISPARAGING, None), "0": (Category.NONE, None)},
        _tweeteval("offensive"), "offensive tweets as insults; train split only",
    ),
    PublicSource(
        "tweeteval-hate", "tweeteval/",
        {"1": (Category.DISPARAGING, None), "0": (Category.NONE, None)},
        _tweeteval("hate"), "hate speech (immigrants, women) as hateful abuse; train split only",
    ),
    PublicSource(
        "cyberbullying", "cyberbullying/",
        {
            "ethnicity": (Category.DISPARAGING, None),
            "gender": (Category.DISPARAGING, None),
            "religion": (Category.DISPARAGING, None),
            "not_cyberbullying": (Category.NONE, None),
            # 'age' is mostly adults remembering school bullies, not a pupil at risk now;
            # 'other' is mixed. Neither fits a label well enough to teach it.
            "age": None,
            "other_cyberbullying": None,
        },
        _csv("cyberbullying/cyberbullying_tweets_balanced10k.csv", "tweet_text",
             "cyberbullying_type"),
        "identity-based abuse as disparaging; age and other left out",
    ),
    PublicSource(
        "selfharm-twitter", "selfharm/twitter-suicidal_data.csv",
        {"1": (SG, Subtype.SELF_HARM), "0": (Category.NONE, None)},
        _csv("selfharm/twitter-suicidal_data.csv", "tweet", "intention"),
        "suicidal intention as safeguarding/self_harm",
    ),
    PublicSource(
        "selfharm-sdcnl", "selfharm/sdcnl_",
        # Both classes describe a person in crisis; a pupil posting either needs the DSL.
        {"1": (SG, Subtype.SELF_HARM), "0": (SG, Subtype.SELF_HARM)},
        _sdcnl, "r/SuicideWatch and r/depression posts both as safeguarding/self_harm",
    ),
    PublicSource(
        "complaints", "complaints/",
        {"1": (Category.REPUTATIONAL, None), "0": (Category.NONE, None)},
        _csv("complaints/complaints-data.csv", 1, 2, header=False),
        "customer complaints as reputational",
    ),
)
PUBLIC_BY_NAME = {s.name: s for s in PUBLIC_SOURCES}


def load_public(
    root: Path | None = None,
    names: Iterable[str] | None = None,
    per_label: int = 300,
    seed: int = 0,
) -> list[Example]:
    """A fixed sample of at most ``per_label`` texts per (source, mapped label)."""
    root = root or datasets_dir()
    chosen = [PUBLIC_BY_NAME[n] for n in names] if names is not None else list(PUBLIC_SOURCES)
    out: list[Example] = []
    for source in chosen:
        buckets: dict[str, list[str]] = {}
        seen: set[str] = set()
        for text, raw in source.read(root):
            text = text.strip()
            target = source.mapping.get(raw)
            if target is None or not text or text in seen:
                continue
            seen.add(text)
            buckets.setdefault(raw, []).append(text)
        for raw in sorted(buckets):
            texts = buckets[raw]
            rng = random.Random(f"{seed}:{source.name}:{raw}")
            picked = rng.sample(texts, min(per_label, len(texts)))
            category, subtype = source.mapping[raw]  # type: ignore[misc]
            for text in picked:
                out.append(Example(
                    text=text, label=category, subtype=subtype, source=source.name,
                    group=f"public:{source.name}",
                ))
    return out


def provenance_lines(names: Iterable[str], root: Path | None = None) -> list[str]:
    """The README table rows (verbatim) for the public sources used."""
    root = root or datasets_dir()
    readme = root / "README.md"
    if not readme.is_file():
        return []
    keys = {PUBLIC_BY_NAME[n].readme_key for n in names}
    rows = [line for line in _lines(readme) if line.startswith("| ") and "@" in line]
    return [row for row in rows if any(row.split("|")[1].strip().startswith(k) for k in keys)]


def mapping_table(used: Iterable[str]) -> list[str]:
    """Markdown rows: how every public source maps onto the taxonomy, and whether it was used."""
    used = set(used)
    rows = []
    for source in PUBLIC_SOURCES:
        name = source.name
        parts = []
        for raw, target in source.mapping.items():
            if target is None:
                parts.append(f"{raw} -> (not used)")
            else:
                cat, sub = target
                parts.append(f"{raw} -> {cat.value}" + (f"/{sub.value}" if sub else ""))
        rows.append(f"| {name} | {'yes' if name in used else 'no'} | {'; '.join(parts)} | "
                    f"{source.note} |")
    return rows
