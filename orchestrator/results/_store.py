"""The one way the results modules turn "a Tracker or a tracking URI" into a ``Tracker``."""

from __future__ import annotations

from orchestrator.tracking import Tracker


def as_tracker(tracker_or_uri: Tracker | str) -> Tracker:
    """``tracker_or_uri`` itself when it is a ``Tracker``, else a ``Tracker`` on that URI."""
    return tracker_or_uri if isinstance(tracker_or_uri, Tracker) else Tracker(str(tracker_or_uri))
