"""The contract every connector implements, and the errors it signals with."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _without_surrogates(value: Any) -> Any:
    """Strings with lone surrogates replaced: databases and email cannot encode them."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")



_URL_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_URL_SPACES = re.compile(r"\s")


def clean_url(url: str) -> str:
    """A link as one clean line: controls removed, inner spaces encoded (the payload keeps the original)."""
    return _URL_SPACES.sub("%20", _URL_CONTROLS.sub("", url).strip())

class Mention(BaseModel):
    """One public post, article or comment as a connector found it."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _clean_strings(cls, data: Any) -> Any:
        # A JSON API can send "\ud800": one such post must not block its whole source.
        if not isinstance(data, dict):
            return data
        data = _without_surrogates(data)
        if isinstance(data.get("url"), str):
            data["url"] = clean_url(data["url"])
        return data

    platform: str
    external_id: str
    url: str
    author: str | None = None
    text: str
    title: str | None = None
    published_at: datetime
    fetched_at: datetime
    raw: dict[str, Any] = Field(default_factory=dict)


class Batch(BaseModel):
    """What one fetch returned: the mentions and the cursor to resume from."""

    model_config = ConfigDict(frozen=True)

    mentions: list[Mention] = Field(default_factory=list)
    next_cursor: str | None = None
    # Calls or units this fetch cost, for platforms that bill or cap by them.
    cost: int = 0


class SchoolContext(BaseModel):
    """What a connector may know about the school it searches for."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    handles: tuple[str, ...] = ()
    exclusions: tuple[str, ...] = ()

    @property
    def search_terms(self) -> tuple[str, ...]:
        """The name and aliases, in order, without repeats."""
        return tuple(dict.fromkeys((self.name, *self.aliases)))


class ConnectorError(Exception):
    """Base class of the outcomes a connector may signal."""


class NotConfigured(ConnectorError):
    """The source's options or credentials cannot work; fix the config."""


class TransientError(ConnectorError):
    """A failure worth retrying later; the cursor stays where it was."""


class RateLimited(TransientError):
    """The platform asked us to come back later; never sleep in a worker thread."""

    def __init__(self, message: str, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class AuthFailed(ConnectorError):
    """Credentials were refused; the source is disabled until its config changes."""


class Connector(ABC):
    """Fetches new mentions for one configured source."""

    # The pydantic model that validates this connector's [sources.options] table.
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel, school: SchoolContext, source_id: str) -> None:
        self.config = config
        self.school = school
        self.source_id = source_id
        # Set by the runner before each fetch on sources with a read or quota budget:
        # how many posts or units may still be spent today (None: no budget).
        self.remaining_budget: int | None = None

    @abstractmethod
    def fetch(self, cursor: str | None) -> Batch:
        """Return mentions newer than ``cursor`` and the cursor to use next time."""

    def daily_budget(self) -> int | None:
        """Posts or quota units this source may spend per UTC day (None: unlimited)."""
        return None

    def close(self) -> None:
        """Release sessions or files; called when the daemon stops."""
