"""Relevance: names, aliases, handles and hashtags on word boundaries, minus exclusions."""
from __future__ import annotations

import pytest

from monitor.relevance import SchoolMatcher

HARROWGATE = SchoolMatcher.build("Harrowgate High School", ["Harrowgate High", "HHS"],
                                 ["@HarrowgateHigh"], ["Harrowgate High Street"])
ST_AIDANS = SchoolMatcher.build("St Aidan's CofE Primary", ["St Aidan's"], [], [])


@pytest.mark.parametrize(("text", "expected"), [
    ("Harrowgate High is a joke", True),
    ("HARROWGATE HIGH SCHOOL open evening", True),
    ("hhs!!", True),
    ("@harrowgatehigh sort it out", True),
    ("harrowgatehigh on insta", True),
    ("#HarrowgateHighSchool proud today", True),
    ("#HarrowgateHigh proud today", True),
    ("Harrow\u200bgate High is a joke", True),
    ("Roadworks on Harrowgate High Street again", False),
    ("Harrowgate High Street roadworks; Harrowgate High pupils helped", True),
    ("HHSX is a band", False),
    ("#HHSX", False),
    ("Harrowgate Highlands walk", False),
])
def test_harrowgate(text, expected):
    assert HARROWGATE.matches(text) is expected


def test_apostrophes_and_title():
    assert ST_AIDANS.matches("St Aidan\u2019s nativity was lovely")
    assert ST_AIDANS.matches(None, "#StAidans sports day")
    assert not ST_AIDANS.matches("St Aidan walked to Lindisfarne")
