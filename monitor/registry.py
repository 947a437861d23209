"""Plugins by name, from entry points; built-ins are registered the same way."""
from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

CONNECTORS = "schoolwatch.connectors"
CLASSIFIERS = "schoolwatch.classifiers"
CHANNELS = "schoolwatch.channels"


class UnknownPlugin(LookupError):
    """No plugin of that name is installed in the group."""

    def __init__(self, group: str, name: str, known: list[str]) -> None:
        kind = group.rsplit(".", 1)[-1].rstrip("s")
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known) or 'none'}")
        self.group, self.name, self.known = group, name, known


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> list[str]:
    """Sorted names of the plugins installed in ``group``."""
    return sorted(_entry_points(group))


def load(group: str, name: str) -> Any:
    """Import and return the plugin class called ``name``; imports happen only here."""
    found = _entry_points(group).get(name)
    if found is None:
        raise UnknownPlugin(group, name, names(group))
    return found.load()
