"""`fastpool demo`: a tour of the main features that runs in a few seconds.

First the drop-in speed-up (fastpool.ThreadPoolExecutor against concurrent.futures on
the same job), then the production scenarios of fastpool.Pool: a batch
e-mail sender with flaky SMTP, retries and a dead-letter report; an image resizer fed
through a bounded queue with progress; a graceful shutdown on SIGTERM with its
ShutdownReport; and the final stats. Everything is simulated (sleeps and failures),
seeded so every run tells the same story.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import sys
import threading
import time
from typing import Any

import fastpool
from fastpool import _bench

__all__ = ["main"]


def _say(text: str = "") -> None:
    print(text, flush=True)


def compare(scale: float = 0.2, rounds: int = 3) -> tuple[float, float]:
    """Median tasks/s of concurrent.futures and of fastpool, measured interleaved on
    `fastpool bench`'s submit case (100k tasks x `scale`)."""
    per_task: dict[str, list[float]] = {"stdlib": [], "fastpool": []}
    for _ in range(rounds):
        for impl, samples in per_task.items():
            with _bench.CASES["submit"].prepare(impl, scale) as run:
                samples.append(run()["time"])
    std, fast = (1e6 / statistics.median(per_task[i]) for i in ("stdlib", "fastpool"))
    return std, fast


def _part_speed() -> None:
    _say("1. Drop-in speed: submit + result() of 20,000 no-op tasks on 4 workers")
    _say("   (from concurrent.futures import ThreadPoolExecutor"
         "  ->  from fastpool import ThreadPoolExecutor)")
    std, fast = compare()
    core = "native" if fastpool.NATIVE else "pure-Python fallback"
    _say(f"   concurrent.futures  {std:>10,.0f} tasks/s")
    _say(f"   fastpool            {fast:>10,.0f} tasks/s   ({core} core)")
    _say(f"   ratio               {fast / std:>10.2f}x")
    _say()


# -- the Pool scenarios ----------------------------------------------------------------


class SMTPError(Exception):
    pass


def _part_email(rng: random.Random) -> Any:
    _say("2. Batch e-mail sender: 400 messages, 8 workers, 5% transient SMTP failures,")
    _say("   Retry(attempts=3); 3 addresses bounce every time -> dead letters")
    bounced = {"bob@bounce.example", "eve@bounce.example", "zed@bounce.example"}
    outbox = [f"user{i}@example.com" for i in range(397)] + sorted(bounced)
    rng.shuffle(outbox)
    # 5% of the messages meet a busy server on their first try: chosen up front, so
    # the story (and its counts) is the same whatever order the workers run in.
    busy_once = set(rng.sample(sorted(set(outbox) - bounced), 20))
    lock = threading.Lock()

    def send(to: str) -> str:
        time.sleep(0.001)  # the SMTP round trip
        if to in bounced:
            raise SMTPError(f"550 mailbox unavailable: {to}")
        with lock:
            busy = to in busy_once
            busy_once.discard(to)
        if busy:
            raise SMTPError("421 service not available, try again later")
        return "250 OK"

    retry = fastpool.Retry(attempts=3, backoff=0.01, jitter=0.1)
    pool = fastpool.Pool(8, retry=retry, name="mailer")
    with pool:
        futures = [pool.schedule(send, (to,), key=to) for to in outbox]
        fastpool.wait(futures)
        sent = sum(1 for f in futures if not f.cancelled() and f.exception() is None)
        stats = pool.stats()
        letters = list(pool.dead_letters)
    _say(f"   sent {sent}/{len(outbox)}, retried {stats.retried} times, "
         f"dead letters: {len(letters)}")
    for dl in letters:
        _say(f"     {dl.key:<22} after {dl.attempts} attempts: {dl.error}")
    _say()
    return stats


def _part_images(rng: random.Random) -> Any:
    _say("3. Image resizer: 240 images through a bounded queue (queue_size=8), 4 workers,")
    _say("   lazy ordered map with a progress callback")
    produced = [0]

    def images() -> Any:
        for i in range(240):
            produced[0] += 1
            yield f"IMG_{i:04d}.jpg", rng.randint(800, 4000)

    def resize(image: tuple[str, int]) -> str:
        name, width = image
        time.sleep(0.003 + width / 2_000_000)  # "decode, scale, encode"
        return f"{name} {width}px -> 640px"

    tty = sys.stdout.isatty()
    last = [0.0]

    def progress(stats: Any) -> None:
        # Called by the pool about every 0.2 s with its Stats: a live line on a
        # terminal, plain lines in a log.
        now = time.monotonic()
        if now - last[0] >= 0.1:
            last[0] = now
            line = (f"   progress: {stats.succeeded:>3} resized, {stats.queued:>2} queued, "
                    f"{stats.running} running")
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)

    pool = fastpool.Pool(4, queue_size=8, name="resizer")
    with pool:
        max_ahead = 0
        done = 0
        for _ in pool.map(resize, images(), progress=progress):
            done += 1
            max_ahead = max(max_ahead, produced[0] - done)
        stats = pool.stats()
    if tty:
        print(flush=True)
    _say(f"   resized {done} images; the generator was never more than {max_ahead} "
         "images ahead of the results (bounded memory)")
    _say()
    return stats


def _part_shutdown() -> Any:
    _say("4. Graceful shutdown: 40 tasks of 50 ms on 4 workers, "
         "pool.handle_signals(timeout=0.2, exit=False);")
    _say("   a timer sends SIGTERM to this process after 0.2 s")
    pool = fastpool.Pool(4, name="ingest")
    futures = [pool.schedule(time.sleep, (0.05,), key=f"job-{i:02d}") for i in range(40)]
    # exit=False: the demo carries on after the signal (by default the process would
    # exit with 128 + SIGTERM once the shutdown is over).
    pool.handle_signals(timeout=0.2, exit=False)
    # On Windows os.kill(pid, SIGTERM) ends the process outright: raise it in-process there.
    if os.name == "nt":
        threading.Timer(0.2, signal.raise_signal, (signal.SIGTERM,)).start()
    else:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    # The signal starts shutdown(timeout=0.2): it drains for 0.2 s, then cancels what
    # never started, so every future ends up done.
    fastpool.wait(futures, timeout=30)
    report = pool.shutdown()  # the report of the shutdown the signal started
    _say(f"   ShutdownReport(completed={report.completed}, "
         f"not_started={len(report.not_started)}, still_running={len(report.still_running)}, "
         f"timed_out={report.timed_out})")
    if report.not_started:
        keys = [t.key for t in report.not_started]
        _say(f"   not started, handed back to persist or resubmit: "
             f"{', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
    _say()
    return pool.stats()


_STAT_FIELDS = ("submitted", "succeeded", "failed", "cancelled", "not_started", "retried",
                "dead_lettered")


def _stats_table(named: list[tuple[str, Any]]) -> None:
    _say("5. Final stats (pool.stats())")
    header = f"   {'pool':<10}" + "".join(f"{f:>14}" for f in _STAT_FIELDS)
    _say(header)
    for name, stats in named:
        run_p50 = getattr(stats, "run_p50", None)
        _say(f"   {name:<10}" + "".join(f"{getattr(stats, f, '-')!s:>14}" for f in _STAT_FIELDS)
             + (f"   run p50 {run_p50 * 1000:.1f} ms" if run_p50 is not None else ""))


def main() -> int:
    t0 = time.perf_counter()
    _say(f"fastpool {fastpool.__version__} demo "
         f"({'native' if fastpool.NATIVE else 'pure-Python'} core, "
         f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    _say()
    _part_speed()
    rng = random.Random(4)
    named = [("mailer", _part_email(rng)), ("resizer", _part_images(rng))]
    named.append(("ingest", _part_shutdown()))
    _stats_table(named)
    _say()
    _say(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return 0
