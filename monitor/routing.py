"""Who hears about an incident: category and severity to roles, roles to people."""
from __future__ import annotations

from dataclasses import dataclass

from classifiers.base import Category, Severity
from monitor.config import RouteSettings, SchoolSettings


@dataclass(frozen=True)
class Delivery:
    """One recipient of one incident, and why."""

    role: str
    recipient: str


def recipients_for(category: Category, severity: Severity | None, school: SchoolSettings,
                   routes: list[RouteSettings]) -> list[Delivery]:
    """Everyone the routes send this incident to, each address once, in route order."""
    deliveries: dict[str, Delivery] = {}
    for route in routes:
        if route.category is not category:
            continue
        # Safeguarding ignores min_severity: a DSL sees every possible risk to a pupil.
        if category is not Category.SAFEGUARDING and severity is not None \
                and severity.rank < route.min_severity.rank:
            continue
        for role in route.roles:
            for person in school.recipients.get(role, []):
                deliveries.setdefault(person.lower(), Delivery(role=role, recipient=person))
    return list(deliveries.values())
