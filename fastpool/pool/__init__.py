"""fastpool.Pool: the production pool.

A ThreadPoolExecutor (so it drops in wherever one is accepted, asyncio's default
executor included) with backpressure, retries, dead letters, cancellation tokens and
deadlines, a timed shutdown that hands back what it did not run, auto-scaling, rate
limiting, task groups, a streaming map and live stats.

How the bookkeeping stays exact: every task is a `core.PoolTask` with a `state`, and
every change of state moves its counters in one step (`core.Ledger.move`, atomic), the
slow paths doing so under the pool's lock. The common task (no per-task options) is
submitted, run and counted by the native core without that lock (see the Ledger in
src/_core.pyx). Futures are settled with their public methods outside that lock (they
run done-callbacks, i.e. user code); a task whose future another thread could also
settle (a deadline) is first claimed under the lock (TASK_SETTLING, still counted where it
was) and counted once settled. The queue is the only other owner of a task: whoever
takes it out (a worker, or shutdown draining) moves it on. A task is in exactly one of
queued / running / retrying / succeeded / failed / cancelled / not_started at every
instant, so `stats()` always adds up; shutdown waits for tasks in transit between the
queue and the lock before it reports.

The parts, one job each (each resets itself after fork):
  _pool.py      Pool, the façade: the public methods, each handing over to a part
  _config.py    the constructor's arguments, checked
  _state.py     PoolState: the lock, the Ledger, the phase flags shared by the parts
  _submit.py    Submitter: the slow submit path and backpressure (the fast path is
                one native call, Pool.submit)
  _scaling.py   Workers: worker threads start, retire, resize
  _outcomes.py  Outcomes: run (slow path), succeed, fail, retry, deadline, dead letter
  _shutdown.py  Shutdown: drain, hand back, abandon, report
  _signals.py   Signals: handle_signals()
  _pacing.py    Pacer: the rate limit
  _groups.py    TaskGroup
  _records.py   Task, ShutdownReport (handed to users), TaskOptions (per task)
  _map.py       the streaming map (Pool.map on the native core.MapJob, amap,
                asubmit): the common path counts each item in the Ledger natively;
                failures, retries, deadlines and dead letters come back here
The hot path reads top to bottom: Pool.submit -> core Ledger.submit -> a worker's
PoolTask.run_plain (src/_core.pyx) -> settled there, or Outcomes.task_failed.
"""

from ._groups import TaskGroup
from ._config import MAX_QUEUE_SIZE
from ._pool import Pool
from ._records import ShutdownReport, Task

__all__ = ["Pool", "Task", "ShutdownReport", "TaskGroup"]
