"""One HTTP client for every connector: timeouts, a size cap, and errors mapped to outcomes."""
from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from connectors.base import AuthFailed, RateLimited, TransientError
from monitor import __version__

USER_AGENT = f"Schoolwatch/{__version__} (+https://github.com/schoolwatch/schoolwatch; school reputation and safeguarding monitor)"
DEFAULT_TIMEOUT = 20.0
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class HttpResponse:
    """A fully read, size-capped response."""

    status: int
    url: str
    headers: Mapping[str, str]
    body: bytes
    # Headers as sent (case-insensitive lookups go through ``header``).
    _lower: dict[str, str] = field(default_factory=dict, repr=False)

    def header(self, name: str) -> str | None:
        """A response header, case-insensitively."""
        return self._lower.get(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON, or TransientError naming the problem."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TransientError(f"malformed JSON from {_safe_url(self.url)}: {exc}") from None


class HttpClient:
    """A requests.Session with the product's User-Agent, timeouts and a body size cap."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_redirects: int = 5) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.max_redirects = max_redirects

    def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, data: Any = None,
                json_body: Any = None, auth: Any = None,
                ok: tuple[int, ...] = (200,)) -> HttpResponse:
        """Send a request; statuses outside ``ok`` become connector errors."""
        try:
            with self.session.request(
                method, url, params=params, headers=headers, data=data, json=json_body,
                auth=auth, timeout=self.timeout, stream=True,
            ) as response:
                body = self._read_capped(response)
                result = HttpResponse(
                    status=response.status_code, url=response.url,
                    headers=dict(response.headers),
                    body=body, _lower={k.lower(): v for k, v in response.headers.items()},
                )
        except requests.TooManyRedirects:
            raise TransientError(f"too many redirects from {_safe_url(url)}") from None
        except requests.Timeout:
            raise TransientError(f"timed out after {self.timeout:g}s: {_safe_url(url)}") from None
        except requests.RequestException as exc:
            raise TransientError(f"cannot reach {_safe_url(url)}: {type(exc).__name__}") from None
        if result.status not in ok:
            raise_for_status(result)
        return result

    def get(self, url: str, **kwargs: Any) -> HttpResponse:
        """GET ``url``; see ``request``."""
        return self.request("GET", url, **kwargs)

    def _read_capped(self, response: requests.Response) -> bytes:
        try:
            return read_capped(response, self.max_bytes, BODY_DEADLINE_FACTOR * self.timeout)
        except BodyTooLarge as exc:
            raise TransientError(f"{exc}: {_safe_url(response.url)}") from None
        except BodyTooSlow:
            raise TransientError(f"timed out after {self.timeout:g}s (body still arriving): "
                                 f"{_safe_url(response.url)}") from None

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()


class BodyTooLarge(Exception):
    """The body went over the size cap (after decompression)."""


class BodyTooSlow(Exception):
    """The body did not arrive within its deadline."""


# A body must arrive within this many times the socket timeout: requests' timeout bounds
# each read, so a server trickling a byte at a time could otherwise hold a worker for ever.
BODY_DEADLINE_FACTOR = 3


def read_capped(response: requests.Response, max_bytes: int, deadline_seconds: float) -> bytes:
    """Read a streamed body: at most ``max_bytes`` decompressed, within ``deadline_seconds``."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"response of {int(declared)} bytes exceeds the {max_bytes}-byte cap")
    deadline = time.monotonic() + deadline_seconds
    chunks, size = [], 0
    raw = response.raw
    while True:
        if time.monotonic() > deadline:
            raise BodyTooSlow(f"body not received within {deadline_seconds:g}s")
        # read1 returns after one socket read; decoding here makes the cap stop gzip bombs.
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"response exceeds the {max_bytes}-byte cap")
        chunks.append(chunk)


def raise_for_status(response: HttpResponse) -> None:
    """Map an unwanted HTTP status to RateLimited, AuthFailed or TransientError."""
    where = _safe_url(response.url)
    if response.status == 429:
        retry_at = retry_time(response.header)
        when = f"; retry after {retry_at:%Y-%m-%d %H:%M:%S} UTC" if retry_at else ""
        raise RateLimited(f"rate limited (429) by {where}{when}", retry_at=retry_at)
    if response.status in (401, 403):
        raise AuthFailed(f"access refused ({response.status}) by {where}")
    if response.status >= 500:
        raise TransientError(f"server error {response.status} from {where}")
    raise TransientError(f"unexpected HTTP {response.status} from {where}")


def retry_time(header: Any, now: datetime | None = None) -> datetime | None:
    """When to come back, from Retry-After or the common X-RateLimit reset headers."""
    now = now or datetime.now(UTC)
    retry_after = header("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return now + timedelta(seconds=int(retry_after))
        try:
            return email.utils.parsedate_to_datetime(retry_after).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    for name in ("x-rate-limit-reset", "x-ratelimit-reset", "ratelimit-reset"):
        value = header(name)
        if not value:
            continue
        try:
            number = float(value)
        except ValueError:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
            except ValueError:
                continue
        # Epoch seconds when large, seconds-from-now when small (Reddit sends the latter).
        if number > 10**9:
            return datetime.fromtimestamp(number, UTC)
        return now + timedelta(seconds=number)
    return None


def _safe_url(url: str) -> str:
    """The URL without its query string, which may carry keys or tokens."""
    return url.split("?", 1)[0]
