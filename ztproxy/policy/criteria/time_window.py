"""``time_window``: the request falls on one of the days, between start and end, in a time zone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from zoneinfo import ZoneInfo

from ztproxy.config import rules
from ztproxy.config.values import WEEKDAYS  # datetime.weekday() order
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import OUTSIDE_TIME_WINDOW


def minutes(clock: str) -> int:
    """``"17:30"`` -> 1050 (``"24:00"`` -> 1440, the end of the day)."""
    hours, _, mins = clock.partition(":")
    return int(hours) * 60 + int(mins)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Start inclusive, end exclusive. When end is before start the window runs past
    midnight and belongs to the day it started: ``fri 22:00-06:00`` covers Saturday 03:00."""

    name: ClassVar[str] = "time_window"
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int
    zone: ZoneInfo

    @classmethod
    def of(cls, window: rules.TimeWindow) -> TimeWindow:
        return cls(frozenset(WEEKDAYS.index(day) for day in window.days), minutes(window.start), minutes(window.end),
                   ZoneInfo(window.timezone))

    def __call__(self, facts: RequestFacts) -> str | None:
        local = facts.now.astimezone(self.zone)
        minute, day = local.hour * 60 + local.minute, local.weekday()
        if self.start < self.end:
            inside = self.start <= minute < self.end and day in self.days
        elif minute >= self.start:  # overnight, evening part
            inside = day in self.days
        else:  # overnight, morning part: the window opened the day before
            inside = minute < self.end and (day - 1) % 7 in self.days
        return None if inside else OUTSIDE_TIME_WINDOW


register(TimeWindow.name, TimeWindow.of, {OUTSIDE_TIME_WINDOW: "This application is not available at this time."})
