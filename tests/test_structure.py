"""The code's shape: a run's config enters few files and comes back to none of them often
(trace_config.py follows it through a tiny run that fires every probe)."""

from __future__ import annotations

from collections import Counter

from trace_config import TINY, trace_run

MOST_STAYS = 8  # the probe dispatcher (probes/prober.py) hands every firing to its family
MOST_FILES = 15  # the engine's files, the probe families, the loop


def test_the_config_enters_few_files_and_stays_in_none_long():
    stays = Counter(trace_run(*TINY))
    assert len(stays) <= MOST_FILES, stays
    assert max(stays.values()) <= MOST_STAYS, stays
    assert {"runs/train.py", "runs/config.py"} <= set(stays)  # the trace sees the run at all
