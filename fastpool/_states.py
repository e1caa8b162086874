"""The numbers of a Pool's bookkeeping, defined once: the Ledger's counter indexes, the
task states, admit()'s answers and the latency-sample sizes.

Both cores use these -- fastpool/_py/ledger.py imports them, and the native core
(src/core/ledger.pxi) reads them into C ints when it is imported -- and so does the
pure-Python side of the Pool (fastpool/pool/, stats.py), whatever core is in use. Both cores
re-export them (core.N_QUEUED is N_QUEUED).
"""

from __future__ import annotations

from typing import Final

# Counter indexes into Ledger.counts(), in the order of Stats' counter fields
# (tests/core/test_ledger.py checks it).
N_SUBMITTED: Final = 0
N_QUEUED: Final = 1
N_RUNNING: Final = 2
N_RETRYING: Final = 3
N_SUCCEEDED: Final = 4
N_FAILED: Final = 5
N_CANCELLED: Final = 6
N_NOT_STARTED: Final = 7
N_RETRIED: Final = 8
N_DEAD_LETTERED: Final = 9
N_REJECTED: Final = 10
N_COUNTERS: Final = 11  # how many counters there are
# Not (or no longer) submitted: Ledger.move() from it counts a submission, to it
# un-counts one.
OUTSIDE: Final = -1

# Task states (PoolTask.state); see fastpool/pool/ (the package docstring).
TASK_QUEUED: Final = 0
TASK_RUNNING: Final = 1
TASK_RETRY: Final = 2
TASK_SETTLING: Final = 3
TASK_DONE: Final = 4
TASK_ABANDONED: Final = 5
# Its deadline passed (its future failed) while its call still runs; it stays counted
# running until the call returns.
TASK_OVERDUE: Final = 6

# Ledger.admit()'s answers.
PUT_OK: Final = 0
PUT_FULL: Final = 1
PUT_CLOSED: Final = 2

# Latency samples kept: the last SAMPLE_WINDOW sampled tasks; one task in SAMPLE_EVERY
# is sampled (two clock reads).
SAMPLE_WINDOW: Final = 4096
SAMPLE_EVERY: Final = 8
