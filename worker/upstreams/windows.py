"""Work windows: the hours of the day an upstream may be sent work (``hours = "08:00-23:00"`` in ``timezone``).

Users of these servers advise day-time hours for an account (``shared/upstreams.md``); outside its window an
upstream gets no submit (its running jobs finish), and the estimate counts only its open hours.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
DAY_S = 86_400


@dataclass(frozen=True)
class WorkWindow:
    """``start``/``end`` in minutes after local midnight; ``end < start`` runs over midnight; None = always."""

    start: int | None
    end: int | None
    zone: ZoneInfo

    @classmethod
    def parse(cls, hours: str, timezone: str) -> WorkWindow:
        try:
            zone = ZoneInfo(timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r} (an IANA name such as Asia/Shanghai)") from None
        if not hours:
            return cls(None, None, zone)
        match = _HOURS.match(hours)
        if not match:
            raise ValueError(f"{hours!r} must be HH:MM-HH:MM (e.g. 08:00-23:00)")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
            raise ValueError(f"{hours!r}: hours 00-24, minutes 00-59")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise ValueError(f"{hours!r}: an empty window")
        return cls(start, end, zone)

    @property
    def always(self) -> bool:
        return self.start is None

    @property
    def label(self) -> str | None:
        """``08:00-23:00 Asia/Shanghai``; None when always open."""
        if self.start is None or self.end is None:
            return None
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d} {self.zone.key}"

    def _minute(self, epoch: float) -> int:
        local = dt.datetime.fromtimestamp(epoch, self.zone)
        return local.hour * 60 + local.minute

    def open_at(self, epoch: float) -> bool:
        if self.start is None or self.end is None:
            return True
        minute = self._minute(epoch)
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def next_open(self, epoch: float) -> float:
        """The first moment at or after ``epoch`` inside the window (minute resolution)."""
        if self.open_at(epoch):
            return epoch
        probe = epoch - epoch % 60 + 60
        for _ in range(24 * 60 + 1):
            if self.open_at(probe):
                return probe
            probe += 60
        return epoch

    @property
    def open_fraction(self) -> float:
        """Share of a day inside the window (for estimates)."""
        if self.start is None or self.end is None:
            return 1.0
        length = (self.end - self.start) % (24 * 60)
        return length / (24 * 60)
