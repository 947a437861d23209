"""Load, validate and compile rule files, and match them against normalised text."""
from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from classifiers.base import Category, Severity, Subtype

_MACRO = re.compile(r"%([a-z][a-z0-9_]*)%")
_NAME = r"^[a-z][a-z0-9_]*$"
# Enough evidence for a reason and for boosting, without walking every match of a 1 MB page.
_MAX_MATCHES = 20
_QUOTE_LIMIT = 80


class RulesError(ValueError):
    """A rules file is unusable; the message names the file and the rule."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleSpec(_Spec):
    """One [[rule]] table: patterns that flag a category, and patterns that veto them."""

    id: str = Field(pattern=_NAME)
    category: Category
    subtype: Subtype | None = None
    severity: Severity
    weight: float = Field(default=0.8, gt=0, le=1)
    patterns: list[str] = Field(min_length=1)
    unless: list[str] = Field(default_factory=list)
    contexts: list[str] = Field(default_factory=list)
    window: int = Field(default=60, ge=0, le=2000)

    @model_validator(mode="after")
    def _subtype_with_safeguarding(self) -> RuleSpec:
        if self.category is Category.NONE:
            raise ValueError("category must be safeguarding, disparaging or reputational")
        if self.category is Category.SAFEGUARDING and self.subtype is None:
            raise ValueError("a safeguarding rule needs a subtype")
        if self.category is not Category.SAFEGUARDING and self.subtype is not None:
            raise ValueError("only safeguarding rules take a subtype")
        return self


class BoosterSpec(_Spec):
    """One [[booster]] table: words near a safeguarding match that make it more urgent."""

    id: str = Field(pattern=_NAME)
    subtypes: list[Subtype] = Field(min_length=1)
    severity: Severity = Severity.HIGH
    patterns: list[str] = Field(min_length=1)
    window: int = Field(default=80, ge=0, le=2000)


class ContextSpec(_Spec):
    """One [context.NAME] table: surroundings (training, fiction, sport) that veto a match."""

    patterns: list[str] = Field(min_length=1)
    window: int = Field(default=80, ge=0, le=2000)


class _FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    macros: dict[str, str] = Field(default_factory=dict)
    context: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rule: list[dict[str, Any]] = Field(default_factory=list)
    booster: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """A compiled context veto."""

    name: str
    pattern: re.Pattern[str]
    window: int


@dataclass(frozen=True)
class Rule:
    """A compiled rule."""

    id: str
    category: Category
    subtype: Subtype | None
    severity: Severity
    weight: float
    pattern: re.Pattern[str]
    vetoes: tuple[tuple[re.Pattern[str], int], ...]
    order: int


@dataclass(frozen=True)
class Booster:
    """A compiled severity booster."""

    id: str
    subtypes: frozenset[Subtype]
    severity: Severity
    pattern: re.Pattern[str]
    window: int


@dataclass
class Hit:
    """A rule that matched: what it quoted, where, and its (possibly boosted) severity."""

    rule: Rule
    quote: str
    spans: list[tuple[int, int]]
    severity: Severity


@dataclass
class Matches:
    """Everything one text matched: rule hits and the boosters that raised them."""

    hits: list[Hit] = field(default_factory=list)
    boosts: dict[str, str] = field(default_factory=dict)


def nests_quantifiers(pattern: str) -> bool:
    """True when a repeated group contains a repeat, the shape that backtracks badly."""
    stack: list[bool] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            continue
        if char == "(":
            stack.append(False)
        elif char == ")":
            inner = stack.pop() if stack else False
            repeated = i + 1 < n and pattern[i + 1] in "*+{"
            if inner and repeated:
                return True
            if stack and (inner or repeated):
                stack[-1] = True
        elif char in "*+{" and stack:
            stack[-1] = True
        i += 1
    return False


def _expand(pattern: str, macros: dict[str, str], depth: int = 0) -> str:
    if depth > 5:
        raise ValueError("macros nest too deeply (a macro refers to itself?)")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in macros:
            raise ValueError(f"unknown macro %{name}%")
        return f"(?:{_expand(macros[name], macros, depth + 1)})"

    return _MACRO.sub(substitute, pattern)


def _compile(patterns: Sequence[str], macros: dict[str, str], where: str) -> re.Pattern[str]:
    """One word-bounded, case-insensitive alternation; errors name ``where`` and the pattern."""
    parts = []
    for number, raw in enumerate(patterns, start=1):
        shown = raw if len(raw) <= 80 else raw[:77] + "..."
        try:
            expanded = _expand(raw, macros)
            compiled = re.compile(expanded, re.IGNORECASE)
        except (re.error, ValueError) as exc:
            raise RulesError(f"{where}: pattern {number} {shown!r} does not compile: {exc}") from None
        if compiled.match(""):
            raise RulesError(f"{where}: pattern {number} {shown!r} matches empty text")
        if nests_quantifiers(expanded):
            raise RulesError(
                f"{where}: pattern {number} {shown!r} repeats a group that itself repeats; "
                "this can backtrack for minutes on long posts"
            )
        parts.append(f"(?<!\\w)(?:{expanded})(?!\\w)")
    return re.compile("|".join(parts), re.IGNORECASE)


def _validate(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'table'}: {err['msg']}" for err in exc.errors()
        )
        raise RulesError(f"{where}: {problems}") from None


@dataclass(frozen=True)
class RuleSet:
    """Compiled rules, contexts and boosters, ready to match normalised text."""

    rules: tuple[Rule, ...]
    boosters: tuple[Booster, ...]
    contexts: tuple[Context, ...] = ()

    def context_matches(self, text: str, names: Sequence[str] | None = None) -> dict[str, str]:
        """{context name: quote} for each named context found anywhere in ``text`` (normalised).

        The ensemble asks for a higher model score when a post is plainly about training,
        fiction, sport or an idiom and no rule found anything for that category.
        """
        found = {}
        for ctx in self.contexts:
            if names is not None and ctx.name not in names:
                continue
            match = ctx.pattern.search(text) if text else None
            if match:
                found[ctx.name] = _quote(match.group())
        return found

    def match(self, text: str) -> Matches:
        """Every rule that matches ``text`` (already normalised) outside its vetoes."""
        found = Matches()
        if not text:
            return found
        for rule in self.rules:
            spans = _unvetoed_spans(rule, text)
            if spans:
                start, end = spans[0]
                found.hits.append(Hit(rule, _quote(text[start:end]), spans, rule.severity))
        for hit in found.hits:
            if hit.rule.subtype is not None:
                self._boost(hit, text, found.boosts)
        return found

    def _boost(self, hit: Hit, text: str, boosts: dict[str, str]) -> None:
        for booster in self.boosters:
            if hit.rule.subtype not in booster.subtypes or hit.severity.rank >= booster.severity.rank:
                continue
            for start, end in hit.spans:
                near = booster.pattern.search(text, max(0, start - booster.window), end + booster.window)
                if near:
                    hit.severity = booster.severity
                    boosts.setdefault(booster.id, _quote(near.group()))
                    break


def _unvetoed_spans(rule: Rule, text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for match in rule.pattern.finditer(text):
        start, end = match.span()
        vetoed = any(
            veto.search(text, max(0, start - window), end + window) for veto, window in rule.vetoes
        )
        if not vetoed:
            spans.append((start, end))
            if len(spans) >= _MAX_MATCHES:
                break
    return spans


def _quote(words: str) -> str:
    words = words.strip()
    return words if len(words) <= _QUOTE_LIMIT else words[: _QUOTE_LIMIT - 3] + "..."


def parse_rules(documents: Sequence[tuple[str, str]]) -> RuleSet:
    """Validate and compile rule documents given as (source name, TOML text), base first."""
    macros: dict[str, str] = {}
    contexts: dict[str, Context] = {}
    rules: list[Rule] = []
    boosters: list[Booster] = []
    seen_ids: set[str] = set()
    for source, text in documents:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RulesError(f"{source}: not valid TOML: {exc}") from None
        spec = _validate(_FileSpec, raw, source)
        for name, body in spec.macros.items():
            if not re.match(_NAME, name) or name in macros:
                raise RulesError(f"{source}: macro {name!r} is badly named or defined twice")
            macros[name] = body
        for name, body in spec.context.items():
            where = f"{source}: context {name!r}"
            if not re.match(_NAME, name) or name in contexts:
                raise RulesError(f"{where}: badly named or defined twice")
            ctx = _validate(ContextSpec, body, where)
            contexts[name] = Context(name, _compile(ctx.patterns, macros, where), ctx.window)
        for index, body in enumerate(spec.rule):
            rule_id = body.get("id") if isinstance(body, dict) else None
            where = f"{source}: rule {rule_id!r}" if rule_id else f"{source}: rule[{index}]"
            if rule_id in seen_ids:
                raise RulesError(f"{where}: id used twice")
            rule = _validate(RuleSpec, body, where)
            seen_ids.add(rule.id)
            vetoes: list[tuple[re.Pattern[str], int]] = []
            if rule.unless:
                vetoes.append((_compile(rule.unless, macros, f"{where} unless"), rule.window))
            for name in rule.contexts:
                if name not in contexts:
                    known = ", ".join(sorted(contexts)) or "none"
                    raise RulesError(f"{where}: unknown context {name!r}; known: {known}")
                vetoes.append((contexts[name].pattern, contexts[name].window))
            rules.append(
                Rule(
                    id=rule.id,
                    category=rule.category,
                    subtype=rule.subtype,
                    severity=rule.severity,
                    weight=rule.weight,
                    pattern=_compile(rule.patterns, macros, where),
                    vetoes=tuple(vetoes),
                    order=len(rules),
                )
            )
        for index, body in enumerate(spec.booster):
            booster_id = body.get("id") if isinstance(body, dict) else None
            where = f"{source}: booster {booster_id!r}" if booster_id else f"{source}: booster[{index}]"
            if booster_id in seen_ids:
                raise RulesError(f"{where}: id used twice")
            boost = _validate(BoosterSpec, body, where)
            seen_ids.add(boost.id)
            boosters.append(
                Booster(
                    id=boost.id,
                    subtypes=frozenset(boost.subtypes),
                    severity=boost.severity,
                    pattern=_compile(boost.patterns, macros, where),
                    window=boost.window,
                )
            )
    return RuleSet(tuple(rules), tuple(boosters), tuple(contexts.values()))
