"""Prototype: a shared-memory ring transport against the pipes fastpool.process uses.

Issue 12 asked for "a native transport: tasks and results cross processes through the
bounded ring-buffer design in shared memory (or whatever measures better)". This file
decides it by measurement, outside the package: the same messages (pickled batches)
cross the same way (one parent, N worker processes, each worker answering each batch)
over

- `pipe`: a duplex `multiprocessing.Pipe` per worker, the parent waiting on all of them
  with `multiprocessing.connection.wait` (what `fastpool.process` does);
- `shm`: per worker, two single-producer/single-consumer byte rings in one
  `multiprocessing.shared_memory` block (length-prefixed messages, head/tail counters),
  and POSIX semaphores for the wake-ups: one per worker for its requests, one shared by
  all workers for their answers (`sem_post` does not enter the kernel when nobody
  waits, so a busy consumer costs no system call per message).

Two cases: `rtt` (one small task at a time, one worker: the round trip of a submit +
result) and `stream` (2 workers, each holding 2 batches of `items` small ints, the
parent sending the next as each answer arrives: the map transport). Linux/x86 only (the
rings rely on x86's store order); no cleanup on crashes: a prototype.

    python benches/proto_shm_ring.py [rounds]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import statistics
import struct
import sys
import time
from multiprocessing import shared_memory
from multiprocessing.connection import wait
from typing import Any

CTX = mp.get_context("forkserver")
HEAD, TAIL, DATA = 0, 64, 128  # head and tail on their own cache lines
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")


class Ring:
    """A single-producer/single-consumer ring of length-prefixed messages."""

    def __init__(self, buf: memoryview, size: int) -> None:
        self.buf = buf
        self.cap = size - DATA

    def put(self, msg: bytes) -> None:
        buf, cap = self.buf, self.cap
        head = _Q.unpack_from(buf, HEAD)[0]
        n = len(msg) + 4
        while head + n - _Q.unpack_from(buf, TAIL)[0] > cap:
            time.sleep(0)  # full (never, in these cases: 2 batches per ring at most)
        self._copy_in(head, _I.pack(len(msg)))
        self._copy_in(head + 4, msg)
        _Q.pack_into(buf, HEAD, head + n)  # published after the bytes (x86: in order)

    def _copy_in(self, pos: int, data: bytes) -> None:
        at = pos % self.cap
        first = min(len(data), self.cap - at)
        self.buf[DATA + at:DATA + at + first] = data[:first]
        if first < len(data):
            self.buf[DATA:DATA + len(data) - first] = data[first:]

    def _copy_out(self, pos: int, n: int) -> bytes:
        at = pos % self.cap
        first = min(n, self.cap - at)
        if first == n:
            return bytes(self.buf[DATA + at:DATA + at + n])
        return bytes(self.buf[DATA + at:DATA + self.cap]) + bytes(self.buf[DATA:DATA + n - first])

    def ready(self) -> bool:
        return _Q.unpack_from(self.buf, HEAD)[0] != _Q.unpack_from(self.buf, TAIL)[0]

    def get(self) -> bytes:
        tail = _Q.unpack_from(self.buf, TAIL)[0]
        n = _I.unpack(self._copy_out(tail, 4))[0]
        msg = self._copy_out(tail + 4, n)
        _Q.pack_into(self.buf, TAIL, tail + 4 + n)
        return msg


RING = 4 << 20


def _rings(shm: Any) -> tuple[Ring, Ring]:
    return (Ring(shm.buf[:RING], RING), Ring(shm.buf[RING:2 * RING], RING))


def _answer(batch: Any) -> Any:
    fn, items = pickle.loads(batch)
    return pickle.dumps(list(map(fn, items)), 5)


def shm_worker(name: str, req_sem: Any, resp_sem: Any) -> None:
    shm = shared_memory.SharedMemory(name=name)
    req, resp = _rings(shm)
    try:
        while True:
            req_sem.acquire()
            msg = req.get()
            if not msg:
                return
            resp.put(_answer(msg))
            resp_sem.release()
    finally:
        del req, resp
        shm.close()


def pipe_worker(conn: Any) -> None:
    while True:
        msg = conn.recv_bytes()
        if not msg:
            return
        conn.send_bytes(_answer(msg))


class ShmTransport:
    def __init__(self, workers: int) -> None:
        self.shms, self.rings, self.sems, self.procs = [], [], [], []
        self.resp_sem = CTX.Semaphore(0)
        for _ in range(workers):
            shm = shared_memory.SharedMemory(create=True, size=2 * RING)
            sem = CTX.Semaphore(0)
            p = CTX.Process(target=shm_worker, args=(shm.name, sem, self.resp_sem))
            p.start()
            self.shms.append(shm)
            self.rings.append(_rings(shm))
            self.sems.append(sem)
            self.procs.append(p)

    def send(self, i: int, msg: bytes) -> None:
        self.rings[i][0].put(msg)
        self.sems[i].release()

    def recv_any(self) -> tuple[int, bytes]:
        self.resp_sem.acquire()
        while True:
            for i, (_, resp) in enumerate(self.rings):
                if resp.ready():
                    return i, resp.get()

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.send(i, b"")
        for p in self.procs:
            p.join()
        self.rings.clear()
        for shm in self.shms:
            shm.close()
            shm.unlink()


class PipeTransport:
    def __init__(self, workers: int) -> None:
        self.conns, self.procs = [], []
        for _ in range(workers):
            a, b = CTX.Pipe(duplex=True)
            p = CTX.Process(target=pipe_worker, args=(b,))
            p.start()
            b.close()
            self.conns.append(a)
            self.procs.append(p)
        self.index = {c: i for i, c in enumerate(self.conns)}
        self.ready: list[Any] = []

    def send(self, i: int, msg: bytes) -> None:
        self.conns[i].send_bytes(msg)

    def recv_any(self) -> tuple[int, bytes]:
        if not self.ready:
            self.ready = wait(self.conns)
        c = self.ready.pop()
        return self.index[c], c.recv_bytes()

    def close(self) -> None:
        for c in self.conns:
            c.send_bytes(b"")
        for p in self.procs:
            p.join()


class PollPipeTransport(PipeTransport):
    """Pipes, the parent waiting with a poll object made once (not one per wait)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        import select
        self.poller = select.poll()
        self.by_fd = {}
        for c in self.conns:
            self.poller.register(c.fileno(), select.POLLIN)
            self.by_fd[c.fileno()] = c

    def recv_any(self) -> tuple[int, bytes]:
        if not self.ready:
            self.ready = [self.by_fd[fd] for fd, _ in self.poller.poll()]
        c = self.ready.pop()
        return self.index[c], c.recv_bytes()


def rtt(t: Any, n: int) -> float:
    """Seconds per round trip of a one-task batch."""
    msg = pickle.dumps((abs, [-1]), 5)
    start = time.perf_counter()
    for _ in range(n):
        t.send(0, msg)
        pickle.loads(t.recv_any()[1])
    return (time.perf_counter() - start) / n


def stream(t: Any, workers: int, batches: int, items: int) -> float:
    """Seconds per item: every worker holds 2 batches, refilled as each answers."""
    msg = pickle.dumps((abs, list(range(items))), 5)
    start = time.perf_counter()
    sent = 0
    for i in range(workers):
        for _ in range(2):
            t.send(i, msg)
            sent += 1
    done = 0
    while done < sent:
        i, data = t.recv_any()
        pickle.loads(data)
        done += 1
        if sent < batches:
            t.send(i, msg)
            sent += 1
    return (time.perf_counter() - start) / (batches * items)


def _cpu(t: Any) -> float:
    """CPU seconds used so far by this process and t's workers (Linux)."""
    total = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    for p in t.procs:
        fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main(rounds: int = 7) -> None:
    load = os.getloadavg()[0]
    kinds = {"pipe": PipeTransport, "pipe-poll": PollPipeTransport, "shm": ShmTransport}
    cases = {"rtt 1 worker (us/round trip)": (1, lambda t: rtt(t, 2000)),
             "stream 2 workers, 1024-item batches (us/item)": (2, lambda t: stream(t, 2, 400, 1024)),
             "stream 2 workers, 16-item batches (us/item)": (2, lambda t: stream(t, 2, 4000, 16))}
    for case, (workers, fn) in cases.items():
        ts = {k: cls(workers) for k, cls in kinds.items()}
        try:
            for t in ts.values():
                fn(t)  # warm-up
            samples: dict[str, list[float]] = {k: [] for k in kinds}
            cpu: dict[str, list[float]] = {k: [] for k in kinds}
            for r in range(rounds):
                order = list(kinds)[r % 3:] + list(kinds)[:r % 3]
                for k in order:
                    c0, t0 = _cpu(ts[k]), time.perf_counter()
                    per_op = fn(ts[k])
                    ops = (time.perf_counter() - t0) / per_op
                    samples[k].append(per_op * 1e6)
                    cpu[k].append((_cpu(ts[k]) - c0) / ops * 1e6)
        finally:
            for t in ts.values():
                t.close()
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"{case:46} " + "  ".join(f"{k} {m:8.3f}" for k, m in med.items()) +
              f"  shm speed-up: {med['pipe'] / med['shm']:4.2f}x pipe,"
              f" {med['pipe-poll'] / med['shm']:4.2f}x pipe-poll")
        for k, v in samples.items():
            print(f"    {k:10} CPU (all processes) {statistics.median(cpu[k]):8.3f};"
                  f" runs " + " ".join(f"{x:.2f}" for x in v))
    print(f"load average (1 min) before: {load:.2f}, after: {os.getloadavg()[0]:.2f}"
          f" on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
