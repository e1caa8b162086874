/* test_ring.cpp -- tests of src/fp_queue.h alone (fp::Ring and fp::Queue), no Python.
 *
 * Built and run by tests/core/native/run.sh: once plain, once under ThreadSanitizer (and
 * optionally ASan+UBSan); tests/core/test_native_queue.py runs that from pytest.
 *
 * Items are unique non-zero integers cast to void*, so "every item popped exactly once"
 * is checked with a per-item counter, and per-producer FIFO order with the integer.
 *
 * FP_TEST_SCALE (env, default 1.0) scales the item counts: TSan runs ~10x slower, so
 * run.sh uses a smaller scale there. Only counts scale; every code path still runs.
 *
 * Exit status 0 = all passed; on failure the first violated CHECK is printed.
 */
#include "fp_queue.h"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using fp::Queue;
using fp::Ring;
using Clock = std::chrono::steady_clock;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "CHECK failed: %s\n  at %s:%d (%s)\n", #cond, __FILE__, \
                   __LINE__, current_test);                                         \
      std::fflush(stderr);                                                          \
      std::_Exit(1);                                                                \
    }                                                                               \
  } while (0)

#if defined(__SANITIZE_THREAD__)
#define FP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FP_TSAN 1
#endif
#endif

static const char *current_test = "?";
static double scale = 1.0;

static size_t scaled(size_t n) {
  size_t v = (size_t)((double)n * scale);
  return v < 16 ? 16 : v;
}

/* Item encoding: producer in the high bits, sequence number (from 1) in the low bits. */
static const int SEQ_BITS = 40;
static void *item(size_t producer, size_t seq) {
  return (void *)(uintptr_t)(((uint64_t)producer << SEQ_BITS) | (uint64_t)(seq + 1));
}
static size_t item_producer(void *p) { return (size_t)((uint64_t)(uintptr_t)p >> SEQ_BITS); }
static size_t item_seq(void *p) {
  return (size_t)(((uint64_t)(uintptr_t)p & ((1ull << SEQ_BITS) - 1)) - 1);
}

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/* Counts how often each item was seen; checks each consumer sees each producer's items
 * in increasing order (a FIFO queue cannot reorder one producer's items for one consumer). */
struct Ledger {
  size_t producers, per_producer;
  std::unique_ptr<std::atomic<uint8_t>[]> seen;
  Ledger(size_t p, size_t n) : producers(p), per_producer(n), seen(new std::atomic<uint8_t>[p * n]) {
    for (size_t i = 0; i < p * n; i++) seen[i].store(0, std::memory_order_relaxed);
  }
  void mark(void *p, std::vector<long> &last_seq_by_producer) {
    size_t prod = item_producer(p), seq = item_seq(p);
    CHECK(p != nullptr);
    CHECK(prod < producers);
    CHECK(seq < per_producer);
    CHECK((long)seq > last_seq_by_producer[prod]); /* per-producer FIFO */
    last_seq_by_producer[prod] = (long)seq;
    uint8_t before = seen[prod * per_producer + seq].fetch_add(1, std::memory_order_relaxed);
    CHECK(before == 0); /* popped at most once */
  }
  size_t count_seen() const {
    size_t n = 0;
    for (size_t i = 0; i < producers * per_producer; i++) n += seen[i].load() != 0;
    return n;
  }
};

/* ------------------------------------------------------------------ Ring alone */

static void test_ring_single_thread_edges() {
  current_test = "ring_single_thread_edges";
  Ring r(5); /* rounds up to 8 */
  CHECK(r.capacity() == 8);
  void *p = nullptr;
  CHECK(!r.pop(&p)); /* empty */
  for (size_t i = 0; i < 8; i++) CHECK(r.push(item(0, i)));
  CHECK(!r.push(item(0, 99))); /* full at exactly capacity */
  for (size_t i = 0; i < 8; i++) {
    CHECK(r.pop(&p));
    CHECK(p == item(0, i));
  }
  CHECK(!r.pop(&p));
  Ring tiny(0);
  CHECK(tiny.capacity() == 2);
  Ring exact(16);
  CHECK(exact.capacity() == 16);
}

/* Capacity 2, many laps, with a varying fill level so every slot is reused at every
 * relative position. */
static void test_ring_wraparound() {
  current_test = "ring_wraparound";
  Ring r(2);
  size_t next_in = 0, next_out = 0, laps = scaled(200000);
  void *p;
  for (size_t i = 0; i < laps; i++) {
    size_t fill = 1 + (i % 2); /* 1 or 2 items: the lap boundary moves between slots */
    for (size_t k = 0; k < fill; k++) CHECK(r.push(item(0, next_in++)));
    if (fill == 2) CHECK(!r.push(item(0, 1ull << 30))); /* full at exactly capacity */
    while (r.pop(&p)) {
      CHECK(item_seq(p) == next_out);
      next_out++;
    }
  }
  CHECK(next_in == next_out);
  CHECK(next_out >= laps);
}

static void run_ring_mpmc(size_t cap, size_t producers, size_t consumers, size_t per_producer) {
  Ring r(cap);
  Ledger ledger(producers, per_producer);
  std::atomic<size_t> popped{0};
  const size_t total = producers * per_producer;
  std::vector<std::thread> threads;
  for (size_t t = 0; t < producers; t++) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < per_producer; i++) {
        while (!r.push(item(t, i))) std::this_thread::yield();
      }
    });
  }
  for (size_t t = 0; t < consumers; t++) {
    threads.emplace_back([&] {
      std::vector<long> last(producers, -1);
      void *p;
      while (popped.load(std::memory_order_relaxed) < total) {
        if (r.pop(&p)) {
          ledger.mark(p, last);
          popped.fetch_add(1, std::memory_order_relaxed);
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  for (auto &th : threads) th.join();
  CHECK(popped.load() == total);
  CHECK(ledger.count_seen() == total);
  void *p;
  CHECK(!r.pop(&p));
}

static void test_ring_mpmc() {
  current_test = "ring_mpmc_4x4_cap1024";
  run_ring_mpmc(1024, 4, 4, scaled(250000));
  current_test = "ring_mpmc_4x4_cap4_wraparound";
  run_ring_mpmc(4, 4, 4, scaled(50000));
  current_test = "ring_mpmc_1x3_cap2";
  run_ring_mpmc(2, 1, 3, scaled(50000));
}

/* ----------------------------------------------------------------- Queue edges */

static void test_queue_bounded_edges() {
  current_test = "queue_bounded_edges";
  Queue q(5); /* ring capacity 8, bound 5: the bound is exact, not the power of two */
  CHECK(q.maxsize() == 5);
  void *p = nullptr;
  CHECK(q.try_pop(&p) == fp::EMPTY);
  for (size_t i = 0; i < 5; i++) CHECK(q.try_push(item(0, i)) == fp::OK);
  CHECK(q.size() == 5);
  CHECK(q.try_push(item(0, 5)) == fp::FULL);
  CHECK(q.push(item(0, 5), 0) == fp::TIMEOUT); /* timeout 0 = don't wait */
  CHECK(q.size() == 5);
  CHECK(q.try_pop(&p) == fp::OK && p == item(0, 0));
  CHECK(q.try_push(item(0, 5)) == fp::OK);
  CHECK(q.try_push(item(0, 6)) == fp::FULL);
  for (size_t i = 1; i <= 5; i++) CHECK(q.try_pop(&p) == fp::OK && p == item(0, i));
  CHECK(q.try_pop(&p) == fp::EMPTY);
  CHECK(q.size() == 0);
  CHECK(!q.closed());

  /* Many laps of a bounded queue whose bound is below its ring capacity. */
  current_test = "queue_bounded_wraparound";
  Queue q3(3);
  size_t in = 0, out = 0;
  for (size_t lap = 0; lap < scaled(100000); lap++) {
    while (q3.try_push(item(0, in)) == fp::OK) in++;
    CHECK(q3.size() == 3);
    size_t take = 1 + lap % 3;
    for (size_t k = 0; k < take; k++) {
      CHECK(q3.try_pop(&p) == fp::OK);
      CHECK(item_seq(p) == out);
      out++;
    }
  }
  while (q3.try_pop(&p) == fp::OK) CHECK(item_seq(p) == out++);
  CHECK(in == out);
}

static void test_queue_timeouts() {
  current_test = "queue_timeouts";
  void *p = nullptr;
  Queue q(1);
  auto t0 = Clock::now();
  CHECK(q.pop(&p, 0.05, 8) == fp::TIMEOUT);
  CHECK(seconds_since(t0) >= 0.045);
  CHECK(q.pop(&p, 0, 0) == fp::TIMEOUT); /* timeout 0: one check, no wait */
  CHECK(q.try_push(item(0, 0)) == fp::OK);
  t0 = Clock::now();
  CHECK(q.push(item(0, 1), 0.05) == fp::TIMEOUT);
  CHECK(seconds_since(t0) >= 0.045);
  CHECK(q.size() == 1);

  /* A blocked producer (forever) is released by a consumer. */
  current_test = "queue_blocking_push_released_by_pop";
  std::atomic<int> st{-1};
  std::thread prod([&] { st = q.push(item(0, 1), -1); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(st.load() == -1); /* still blocked: the queue is full */
  CHECK(q.pop(&p, 5.0, 0) == fp::OK && p == item(0, 0));
  prod.join();
  CHECK(st.load() == fp::OK);
  CHECK(q.pop(&p, 5.0, 0) == fp::OK && p == item(0, 1));

  /* A blocked consumer (forever) is released by a producer. */
  current_test = "queue_blocking_pop_released_by_push";
  std::atomic<uintptr_t> got{0};
  std::thread cons([&] {
    void *x = nullptr;
    if (q.pop(&x, -1, 4) == fp::OK) got = (uintptr_t)x;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(got.load() == 0);
  CHECK(q.try_push(item(0, 2)) == fp::OK);
  cons.join();
  CHECK(got.load() == (uintptr_t)item(0, 2));
}

static void test_queue_unbounded_overflow() {
  current_test = "queue_unbounded_overflow_fifo";
  Queue q(0, 4); /* ring of 4: almost everything goes through the overflow list */
  const size_t n = 1000;
  for (size_t i = 0; i < n; i++) CHECK(q.try_push(item(0, i)) == fp::OK);
  CHECK(q.size() == n);
  void *p;
  /* Interleave pushes and pops so items move between the ring and the overflow. */
  size_t out = 0, in = n;
  for (size_t i = 0; i < 500; i++) {
    CHECK(q.try_pop(&p) == fp::OK);
    CHECK(item_seq(p) == out);
    out++;
    CHECK(q.try_push(item(0, in++)) == fp::OK);
  }
  while (q.try_pop(&p) == fp::OK) {
    CHECK(item_seq(p) == out);
    out++;
  }
  CHECK(out == in);
  CHECK(q.size() == 0);
  CHECK(q.push(item(0, in), 0) == fp::OK); /* unbounded: push never times out */
  CHECK(q.try_pop(&p) == fp::OK);
}

static void test_queue_drain() {
  current_test = "queue_drain";
  Queue q(0, 8);
  for (size_t i = 0; i < 100; i++) CHECK(q.try_push(item(0, i)) == fp::OK);
  std::vector<void *> out;
  q.drain(out);
  CHECK(out.size() == 100);
  for (size_t i = 0; i < out.size(); i++) CHECK(out[i] == item(0, i));
  CHECK(q.size() == 0);
  void *p;
  CHECK(q.try_pop(&p) == fp::EMPTY);
  out.clear();
  q.drain(out);
  CHECK(out.empty());
  /* Bounded: drain frees the places. */
  Queue b(3);
  for (size_t i = 0; i < 3; i++) CHECK(b.try_push(item(0, i)) == fp::OK);
  CHECK(b.try_push(item(0, 3)) == fp::FULL);
  out.clear();
  b.drain(out);
  CHECK(out.size() == 3);
  CHECK(b.try_push(item(0, 3)) == fp::OK);
}

/* ------------------------------------------------------------- Queue and close */

static void test_close_single_thread() {
  current_test = "close_single_thread";
  Queue q(0, 4);
  for (size_t i = 0; i < 10; i++) CHECK(q.try_push(item(0, i)) == fp::OK);
  q.close();
  CHECK(q.closed());
  CHECK(q.try_push(item(0, 10)) == fp::CLOSED);
  CHECK(q.push(item(0, 10), 1.0) == fp::CLOSED);
  void *p;
  for (size_t i = 0; i < 10; i++) CHECK(q.pop(&p, 1.0, 0) == fp::OK && p == item(0, i));
  CHECK(q.try_pop(&p) == fp::CLOSED);
  CHECK(q.pop(&p, 1.0, 4) == fp::CLOSED);
  CHECK(q.pop(&p, -1, 0) == fp::CLOSED); /* never blocks once closed and empty */
  q.close(); /* idempotent */
  CHECK(q.try_pop(&p) == fp::CLOSED);
}

/* close() wakes every parked consumer and every producer blocked on a full queue. */
static void test_close_wakes_waiters() {
  current_test = "close_wakes_waiters";
  Queue full(1);
  CHECK(full.try_push(item(0, 0)) == fp::OK);
  Queue empty(0);
  std::atomic<int> prod_closed{0}, cons_closed{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; i++) {
    ts.emplace_back([&] {
      if (full.push(item(1, 0), -1) == fp::CLOSED) prod_closed++;
    });
    ts.emplace_back([&] {
      void *p;
      if (empty.pop(&p, -1, 16) == fp::CLOSED) cons_closed++;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  full.close();
  empty.close();
  for (auto &t : ts) t.join();
  CHECK(prod_closed.load() == 3);
  CHECK(cons_closed.load() == 3);
  void *p;
  CHECK(full.try_pop(&p) == fp::OK && p == item(0, 0)); /* queued before close: kept */
  CHECK(full.try_pop(&p) == fp::CLOSED);
}

/* Producers race close(): every push that returned OK is popped exactly once, no push
 * that starts after close() returned succeeds, and consumers exit on CLOSED only when
 * nothing is left (no stranded item). */
static void run_close_race(size_t maxsize, size_t ring_cap, size_t producers, size_t consumers,
                           size_t per_producer, double close_after) {
  Queue q(maxsize, ring_cap);
  Ledger ledger(producers, per_producer);
  std::atomic<bool> close_returned{false};
  std::atomic<size_t> accepted{0}, popped{0}, late_ok{0};
  std::vector<std::thread> ts;
  for (size_t t = 0; t < producers; t++) {
    ts.emplace_back([&, t] {
      for (size_t i = 0; i < per_producer; i++) {
        bool after_close = close_returned.load(std::memory_order_seq_cst);
        int st = maxsize ? q.push(item(t, i), 5.0) : q.try_push(item(t, i));
        if (st == fp::OK) {
          accepted++;
          if (after_close) late_ok++;
        } else {
          CHECK(st == fp::CLOSED);
          break; /* a closed queue stays closed */
        }
      }
    });
  }
  for (size_t t = 0; t < consumers; t++) {
    ts.emplace_back([&] {
      std::vector<long> last(producers, -1);
      void *p;
      for (;;) {
        int st = q.pop(&p, 10.0, 32);
        if (st == fp::OK) {
          ledger.mark(p, last);
          popped++;
        } else {
          CHECK(st == fp::CLOSED); /* 10 s without an item would be a hang */
          break;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(close_after));
  q.close();
  close_returned.store(true, std::memory_order_seq_cst);
  for (auto &t : ts) t.join();
  CHECK(late_ok.load() == 0);
  CHECK(popped.load() == accepted.load());
  CHECK(ledger.count_seen() == accepted.load());
  void *p;
  CHECK(q.try_pop(&p) == fp::CLOSED);
  CHECK(q.size() == 0);
}

static void test_close_races() {
  size_t n = scaled(200000);
  current_test = "close_race_unbounded_overflow";
  for (int i = 0; i < 5; i++) run_close_race(0, 4, 4, 2, n, 0.002 * i);
  current_test = "close_race_unbounded";
  for (int i = 0; i < 5; i++) run_close_race(0, 1024, 4, 4, n, 0.002 * i);
  current_test = "close_race_bounded";
  for (int i = 0; i < 5; i++) run_close_race(7, 0, 4, 3, n, 0.002 * i);
}

/* The main stress: P producers, C consumers through one queue, millions of items. */
static void run_queue_mpmc(size_t maxsize, size_t ring_cap, size_t producers, size_t consumers,
                           size_t per_producer, bool blocking) {
  Queue q(maxsize, ring_cap);
  Ledger ledger(producers, per_producer);
  std::atomic<size_t> popped{0};
  std::vector<std::thread> prods, cons;
  for (size_t t = 0; t < producers; t++) {
    prods.emplace_back([&, t] {
      for (size_t i = 0; i < per_producer; i++) {
        if (blocking) {
          CHECK(q.push(item(t, i), -1) == fp::OK);
        } else {
          int st;
          while ((st = q.try_push(item(t, i))) == fp::FULL) std::this_thread::yield();
          CHECK(st == fp::OK);
        }
      }
    });
  }
  for (size_t t = 0; t < consumers; t++) {
    cons.emplace_back([&, t] {
      std::vector<long> last(producers, -1);
      void *p;
      for (;;) {
        /* Mix the entry points: parked pop, spinning pop, try_pop. */
        int st = (t % 3 == 2) ? q.try_pop(&p) : q.pop(&p, 10.0, t % 3 == 0 ? 0 : 64);
        if (st == fp::OK) {
          ledger.mark(p, last);
          popped++;
        } else if (st == fp::CLOSED) {
          break;
        } else if (st == fp::EMPTY) {
          std::this_thread::yield();
        } else {
          CHECK(st != fp::TIMEOUT); /* 10 s with producers running: a lost wake-up */
        }
      }
    });
  }
  for (auto &t : prods) t.join();
  q.close();
  for (auto &t : cons) t.join();
  const size_t total = producers * per_producer;
  CHECK(popped.load() == total);
  CHECK(ledger.count_seen() == total);
  CHECK(q.size() == 0);
}

static void test_queue_mpmc() {
  current_test = "queue_mpmc_unbounded_4x4";
  run_queue_mpmc(0, 1024, 4, 4, scaled(250000), false);
  current_test = "queue_mpmc_unbounded_overflow_4x4";
  run_queue_mpmc(0, 4, 4, 4, scaled(50000), false);
  current_test = "queue_mpmc_bounded_blocking_4x4";
  run_queue_mpmc(3, 0, 4, 4, scaled(50000), true);
  current_test = "queue_mpmc_bounded_try_4x4";
  run_queue_mpmc(100, 0, 4, 4, scaled(100000), false);
  current_test = "queue_mpmc_bounded1_blocking_2x2";
  run_queue_mpmc(1, 0, 2, 2, scaled(20000), true);
}

/* Parked consumers are woken item by item (no lost wake-up): a single producer hands
 * items one at a time to consumers that always park (spin 0), and waits for each to be
 * taken before the next. A lost wake-up shows as a 10 s TIMEOUT. */
static void test_no_lost_wakeup() {
  current_test = "no_lost_wakeup";
  Queue q(0);
  std::atomic<size_t> taken{0};
  const size_t n = scaled(20000);
  std::vector<std::thread> cons;
  for (int t = 0; t < 3; t++) {
    cons.emplace_back([&] {
      void *p;
      for (;;) {
        int st = q.pop(&p, 10.0, 0);
        if (st == fp::CLOSED) break;
        CHECK(st == fp::OK);
        taken++;
      }
    });
  }
  for (size_t i = 0; i < n; i++) {
    CHECK(q.try_push(item(0, i)) == fp::OK);
    auto t0 = Clock::now();
    while (taken.load() <= i) {
      CHECK(seconds_since(t0) < 10.0);
      std::this_thread::yield();
    }
  }
  q.close();
  for (auto &t : cons) t.join();
  CHECK(taken.load() == n);
}

/* Work fans out to every parked worker: K consumers, bursts of K items, and a consumer
 * that holds an item does not come back for more until all K items of the burst are
 * taken (like tasks that wait for each other). If a producer or the consumer that got
 * the first item fails to wake the next parked one, the burst never completes: a hang,
 * reported after 10 s. Run with and without the spinning phase. */
static void run_fanout(long spin_ns) {
  const int K = 4;
  Queue q(0);
  std::atomic<int> taken{0};
  std::atomic<int> round{0};
  const int rounds = (int)scaled(2000);
  std::vector<std::thread> cons;
  for (int t = 0; t < K; t++) {
    cons.emplace_back([&] {
      void *p;
      for (;;) {
        int st = q.pop(&p, 20.0, spin_ns);
        if (st == fp::CLOSED) return;
        CHECK(st == fp::OK);
        int r = (int)item_seq(p) / K;
        taken++;
        auto t0 = Clock::now();
        while (round.load() == r) { /* hold this worker until the burst is done */
          CHECK(seconds_since(t0) < 10.0);
          std::this_thread::yield();
        }
      }
    });
  }
  for (int r = 0; r < rounds; r++) {
    for (int k = 0; k < K; k++) CHECK(q.try_push(item(0, (size_t)(r * K + k))) == fp::OK);
    auto t0 = Clock::now();
    while (taken.load() < (r + 1) * K) {
      CHECK(seconds_since(t0) < 10.0); /* some parked worker was never woken */
      std::this_thread::yield();
    }
    round.store(r + 1);
  }
  q.close();
  for (auto &t : cons) t.join();
  CHECK(taken.load() == rounds * K);
}

static void test_fanout() {
  current_test = "fanout_parked_only";
  run_fanout(0);
  current_test = "fanout_with_spinner";
  run_fanout(20000);
}

/* ---------------------------------------------------------------------- Signal */

/* fp::Signal (the map's wake-up): a generation counter plus parking. Ping-pong between
 * a notifier and a parked waiter, each round waiting for the other: a lost wake-up
 * leaves the waiter asleep until its 10 s timeout (then CHECK fails). */
static void test_signal() {
  current_test = "signal_basics";
  fp::Signal sig;
  CHECK(sig.generation() == 0);
  auto t0 = Clock::now();
  CHECK(!sig.wait(0, 0.02)); /* nothing happened: times out */
  CHECK(seconds_since(t0) >= 0.015);
  sig.notify();
  CHECK(sig.generation() == 1);
  CHECK(sig.wait(0, -1)); /* already moved on: returns at once, even "forever" */
  CHECK(sig.wait(0, 0));

  current_test = "signal_ping_pong";
  fp::Signal ping;
  std::atomic<long> acked{0};
  const long rounds = (long)scaled(20000);
  const unsigned long start = ping.generation(); /* read before the first notify */
  std::thread waiter([&] {
    unsigned long seen = start;
    for (long r = 0; r < rounds; r++) {
      while (ping.generation() == seen) CHECK(ping.wait(seen, 10.0) || ping.generation() != seen);
      seen = ping.generation();
      acked.fetch_add(1);
    }
  });
  for (long r = 0; r < rounds; r++) {
    ping.notify();
    auto t1 = Clock::now();
    while (acked.load() <= r) {
      CHECK(seconds_since(t1) < 10.0);
      std::this_thread::yield();
    }
  }
  waiter.join();
  CHECK(acked.load() == rounds);
}

/* ------------------------------------------------------------------------ fork */

/* Fork while other threads hammer the queue: the child salvages every item published
 * before the fork (from the ring and the overflow list), gets a usable queue, and never
 * hangs. The parent's queue keeps working. Whatever locking the fork protocol needs
 * (lock_for_fork/unlock_after_fork, or an internal pthread_atfork) is exercised here. */
static void test_fork() {
  current_test = "fork_reset_after_fork";
  Queue q(0, 8);
  for (size_t i = 0; i < 50; i++) CHECK(q.try_push(item(0, i)) == fp::OK); /* 8 ring + 42 overflow */
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; t++) {
    ts.emplace_back([&, t] {
      size_t i = 0;
      void *p;
      while (!stop.load()) {
        q.try_push(item(1 + t, i++));
        q.pop(&p, 0.001, 4);
      }
    });
  }
  for (int round = 0; round < 20; round++) {
    q.lock_for_fork();
    pid_t pid = fork();
    if (pid == 0) {
      std::vector<void *> items;
      q.reset_after_fork(items);
      /* Every salvaged item is a valid encoded item, each at most once. */
      std::vector<void *> seen;
      for (void *p : items) {
        if (p == nullptr || item_producer(p) > 2) std::_Exit(10);
        for (void *s : seen)
          if (s == p) std::_Exit(11);
        seen.push_back(p);
      }
      /* The queue works in the child (fresh synchronisation objects). */
      void *p;
      if (q.try_pop(&p) != fp::EMPTY) std::_Exit(12);
      if (q.size() != 0) std::_Exit(13);
      if (q.pop(&p, 0.01, 1000) != fp::TIMEOUT) std::_Exit(17); /* mu usable */
#if !FP_TSAN /* TSan cannot start threads in the child of a multithreaded fork */
      std::thread c([&] {
        void *x;
        if (q.pop(&x, 5.0, 0) != fp::OK || x != item(7, 0)) std::_Exit(14);
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      if (q.try_push(item(7, 0)) != fp::OK) std::_Exit(15);
      c.join();
#else
      if (q.try_push(item(7, 0)) != fp::OK) std::_Exit(15);
      if (q.pop(&p, 1.0, 0) != fp::OK || p != item(7, 0)) std::_Exit(14);
#endif
      q.close();
      if (q.try_pop(&p) != fp::CLOSED) std::_Exit(16);
      std::_Exit(0);
    }
    q.unlock_after_fork();
    CHECK(pid > 0);
    int status = 0;
    auto t0 = Clock::now();
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0) {
      if (seconds_since(t0) > 30) {
        kill(pid, SIGKILL);
        CHECK(!"child hung after fork");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    CHECK(w == pid);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      std::fprintf(stderr, "child status %d\n", status);
      CHECK(!"child failed");
    }
  }
  stop = true;
  for (auto &t : ts) t.join();
  /* The parent's queue is intact. */
  CHECK(q.try_push(item(0, 999)) == fp::OK);
  std::vector<void *> rest;
  q.drain(rest);
  CHECK(!rest.empty());
}

/* ------------------------------------------------------------------------ main */

struct Test {
  const char *name;
  void (*fn)();
};

/* Retire requests: exactly n claims succeed however many threads race for them, and a
 * new request replaces the old one. */
static void test_retire_claims() {
  current_test = "retire_claims";
  Queue q(0, 8);
  CHECK(!q.claim_retire() && q.retire_requested() == 0);
  q.request_retire(-3); /* clamps to 0 */
  CHECK(q.retire_requested() == 0 && !q.claim_retire());
  q.request_retire(2);
  q.request_retire(5); /* replaces */
  CHECK(q.retire_requested() == 5);
  for (int round = 0; round < (int)scaled(200); round++) {
    const long want = 1 + round % 7;
    q.request_retire(want);
    std::atomic<long> claimed{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; t++)
      ts.emplace_back([&] {
        for (int i = 0; i < 10; i++)
          if (q.claim_retire()) claimed.fetch_add(1);
      });
    for (auto &t : ts) t.join();
    CHECK(claimed.load() == want);
    CHECK(q.retire_requested() == 0);
  }
}

int main(int argc, char **argv) {
  const char *s = std::getenv("FP_TEST_SCALE");
  if (s && *s) scale = std::atof(s);
  const Test tests[] = {
      {"ring_edges", test_ring_single_thread_edges},
      {"ring_wraparound", test_ring_wraparound},
      {"ring_mpmc", test_ring_mpmc},
      {"queue_bounded_edges", test_queue_bounded_edges},
      {"queue_timeouts", test_queue_timeouts},
      {"queue_overflow", test_queue_unbounded_overflow},
      {"queue_drain", test_queue_drain},
      {"close_single_thread", test_close_single_thread},
      {"close_wakes_waiters", test_close_wakes_waiters},
      {"close_races", test_close_races},
      {"queue_mpmc", test_queue_mpmc},
      {"no_lost_wakeup", test_no_lost_wakeup},
      {"fanout", test_fanout},
      {"signal", test_signal},
      {"fork", test_fork},
      {"retire_claims", test_retire_claims},
  };
  int ran = 0;
  for (const Test &t : tests) {
    if (argc > 1) { /* run only the named tests */
      bool want = false;
      for (int i = 1; i < argc; i++) want |= std::strcmp(argv[i], t.name) == 0;
      if (!want) continue;
    }
    auto t0 = Clock::now();
    t.fn();
    std::printf("ok   %-22s %.2fs\n", t.name, seconds_since(t0));
    std::fflush(stdout);
    ran++;
  }
  if (ran == 0) {
    std::fprintf(stderr, "no test matched\n");
    return 2;
  }
  std::printf("all %d passed (scale %.3g)\n", ran, scale);
  return 0;
}
