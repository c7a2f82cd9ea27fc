"""``time_window``: days, hours, time zone; overnight windows belong to the day they start."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.unit.policy.helpers import facts, reasons
from ztproxy.policy.reasons import OUTSIDE_TIME_WINDOW

OFFICE = {"time_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:30",
                          "timezone": "Europe/Paris"}}
NIGHT = {"time_window": {"days": ["fri"], "start": "22:00", "end": "06:00", "timezone": "UTC"}}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("when", "holds"), [
    ("2024-05-06 07:00", True),  # Monday 09:00 in Paris (CEST)
    ("2024-05-06 06:59", False),
    ("2024-05-06 15:29", True),
    ("2024-05-06 15:30", False),  # end is exclusive
    ("2024-05-04 10:00", False),  # Saturday
    ("2024-01-08 08:00", True),  # Monday 09:00 in Paris (CET): the offset follows the date
])
def test_office_hours(when: str, holds: bool) -> None:
    assert reasons(OFFICE, facts(now=at(when))) == (() if holds else (OUTSIDE_TIME_WINDOW,))


@pytest.mark.parametrize(("when", "holds"), [
    ("2024-05-10 22:00", True),  # Friday evening
    ("2024-05-11 05:59", True),  # Saturday morning: Friday's window
    ("2024-05-11 06:00", False),
    ("2024-05-10 05:00", False),  # Friday morning belongs to Thursday's window
    ("2024-05-11 22:30", False),  # Saturday evening
])
def test_overnight(when: str, holds: bool) -> None:
    assert reasons(NIGHT, facts(now=at(when))) == (() if holds else (OUTSIDE_TIME_WINDOW,))


def test_until_midnight_and_default_days() -> None:
    rule = {"time_window": {"start": "18:00", "end": "24:00"}}
    assert reasons(rule, facts(now=at("2024-05-11 23:59"))) == ()
    assert reasons(rule, facts(now=at("2024-05-11 00:00"))) == (OUTSIDE_TIME_WINDOW,)
