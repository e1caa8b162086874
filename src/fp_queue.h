/* fp_queue.h -- the work queue at the heart of fastpool.
 *
 * Python-free C++ (it never touches a PyObject's refcount), so it can be tested
 * alone under ThreadSanitizer (tests/core/native/test_ring.cpp) and called without the GIL.
 *
 *   Ring   a bounded multi-producer multi-consumer ring buffer (D. Vyukov's design:
 *          one sequence number per slot, no lock on the fast path).
 *   Queue  the ring plus what a pool needs around it: an exact bound (`maxsize`),
 *          an overflow list for unbounded queues, parking of idle consumers and of
 *          producers waiting for space, close(), drain() and fork support.
 *
 * Why C++ rather than C11: MSVC has no usable <stdatomic.h>, while <atomic>,
 * <mutex> and <condition_variable> are portable across GCC, Clang and MSVC.
 */
#ifndef FP_QUEUE_H
#define FP_QUEUE_H

#if defined(_MSC_VER) && !defined(_DISABLE_CONSTEXPR_MUTEX_CONSTRUCTOR)
/* MSVC 17.10 made std::mutex's constructor constexpr; an extension built that way
 * crashes when an older msvcp140.dll was loaded first by another module. */
#define _DISABLE_CONSTEXPR_MUTEX_CONSTRUCTOR
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
#define FP_CPU_RELAX() _mm_pause()
#elif defined(_MSC_VER) && (defined(_M_ARM64) || defined(_M_ARM))
#include <intrin.h>
#define FP_CPU_RELAX() __yield()
#elif defined(__x86_64__) || defined(__i386__)
#define FP_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define FP_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define FP_CPU_RELAX() ((void)0)
#endif

namespace fp {

enum Status { OK = 0, EMPTY = 1, FULL = 1, TIMEOUT = 2, CLOSED = 3 };

/* ------------------------------------------------------------- blocking on a mutex
 * Rule: never *block* on one of our mutexes while holding the GIL. A thread may hold a
 * queue's mutex across Python code (the fork hooks hold it from before fork() until
 * after: other at-fork hooks run bytecode meanwhile, so the GIL changes hands), and if
 * another thread then waited for that mutex with the GIL in hand, neither could go on.
 * So locking tries first, and if the mutex is taken calls these hooks around the
 * blocking wait; the Python binding installs hooks that release the GIL when the
 * calling thread holds it (src/_core.pyx). This header stays free of Python. */
struct BlockHooks {
  void *(*begin)();     /* before blocking; returns what end() needs */
  void (*end)(void *);  /* after the mutex is ours */
};
inline BlockHooks &block_hooks() {
  static BlockHooks hooks = {nullptr, nullptr};
  return hooks;
}
inline void set_block_hooks(void *(*begin)(), void (*end)(void *)) {
  block_hooks().begin = begin;
  block_hooks().end = end;
}

template <class Lock>
inline void lock_politely(Lock &lk) {
  if (lk.try_lock()) return;
  BlockHooks &h = block_hooks();
  void *state = h.begin ? h.begin() : nullptr;
  lk.lock();
  if (h.end) h.end(state);
}

/* A scoped lock (as std::lock_guard) that locks politely. */
class Guard {
 public:
  explicit Guard(std::mutex &m) : m_(m) { lock_politely(m_); }
  ~Guard() { m_.unlock(); }
  Guard(const Guard &) = delete;
  Guard &operator=(const Guard &) = delete;

 private:
  std::mutex &m_;
};

/* Keeps the hot counters of producers and consumers on separate cache lines. Done
 * with padding: an over-aligned class would need C++17 aligned operator new, which
 * libc++ only has from macOS 10.13. */
static const size_t CACHE_LINE = 64;

/* ------------------------------------------------------------------------ Ring
 * Memory ordering (why this is correct):
 *  - Slot i carries seq. seq == pos      : free for the producer of position pos;
 *                        seq == pos + 1  : holds the item of position pos;
 *                        seq == pos + cap: freed by the consumer, ready for the next lap.
 *  - A producer claims position pos by CAS on enqueue_pos, writes data, then stores
 *    seq = pos + 1 with release. A consumer reads seq with acquire: seeing pos + 1
 *    makes the data write visible before it reads data (release/acquire pair).
 *  - The consumer reads data, then stores seq = pos + cap with release; the next
 *    producer's acquire load of seq orders its data write after that read.
 *  - The CAS on the positions only needs to be atomic (relaxed): the slot's seq is what
 *    publishes data; the positions just hand out slots uniquely.
 * A producer stalled between its CAS and its seq store makes that slot look empty to
 * consumers (pop says EMPTY while later slots may be full); it is never lost: the
 * producer signals waiting consumers after publishing (Queue::wake_consumer).
 */
class Ring {
 public:
  explicit Ring(size_t min_capacity) {
    size_t cap = 2;
    while (cap < min_capacity) cap <<= 1;
    mask_ = cap - 1;
    cells_ = new Cell[cap];
    for (size_t i = 0; i < cap; i++) cells_[i].seq.store(i, std::memory_order_relaxed);
    enqueue_pos_.store(0, std::memory_order_relaxed);
    dequeue_pos_.store(0, std::memory_order_relaxed);
  }
  ~Ring() { delete[] cells_; }
  Ring(const Ring &) = delete;
  Ring &operator=(const Ring &) = delete;

  size_t capacity() const { return mask_ + 1; }

  bool push(void *data) {
    Cell *cell;
    size_t pos = enqueue_pos_.load(std::memory_order_relaxed);
    for (;;) {
      cell = &cells_[pos & mask_];
      size_t seq = cell->seq.load(std::memory_order_acquire);
      intptr_t dif = (intptr_t)seq - (intptr_t)pos;
      if (dif == 0) {
        if (enqueue_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
      } else if (dif < 0) {
        return false; /* full: the slot still holds last lap's item */
      } else {
        pos = enqueue_pos_.load(std::memory_order_relaxed);
      }
    }
    cell->data = data;
    cell->seq.store(pos + 1, std::memory_order_release);
    return true;
  }

  bool pop(void **data) {
    Cell *cell;
    size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
    for (;;) {
      cell = &cells_[pos & mask_];
      size_t seq = cell->seq.load(std::memory_order_acquire);
      intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
      if (dif == 0) {
        if (dequeue_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
      } else if (dif < 0) {
        return false; /* empty (or the producer of this slot has not published yet) */
      } else {
        pos = dequeue_pos_.load(std::memory_order_relaxed);
      }
    }
    *data = cell->data;
    cell->seq.store(pos + mask_ + 1, std::memory_order_release);
    return true;
  }

  /* Positions claimed by producers and not yet by consumers: > 0 while an item is in
   * the ring, published or still being written. Read dequeue first: both only grow and
   * enqueue_pos >= dequeue_pos always, so the difference is never negative. */
  size_t unclaimed() const {
    size_t d = dequeue_pos_.load(std::memory_order_seq_cst);
    size_t e = enqueue_pos_.load(std::memory_order_seq_cst);
    return e - d;
  }

  /* Only in a forked child, where no other thread exists: takes every published item
   * and resets the ring. A slot claimed but not published at fork time belonged to a
   * thread that does not exist here; it is skipped (its item stays with the parent). */
  void salvage_after_fork(std::vector<void *> &out) {
    size_t head = dequeue_pos_.load(std::memory_order_relaxed);
    size_t tail = enqueue_pos_.load(std::memory_order_relaxed);
    for (size_t pos = head; pos != tail; pos++) {
      Cell *cell = &cells_[pos & mask_];
      if (cell->seq.load(std::memory_order_relaxed) == pos + 1) out.push_back(cell->data);
    }
    for (size_t i = 0; i <= mask_; i++) cells_[i].seq.store(i, std::memory_order_relaxed);
    enqueue_pos_.store(0, std::memory_order_relaxed);
    dequeue_pos_.store(0, std::memory_order_relaxed);
  }

 private:
  struct Cell {
    std::atomic<size_t> seq;
    void *data;
  };
  Cell *cells_;
  size_t mask_;
  char pad0_[CACHE_LINE];
  std::atomic<size_t> enqueue_pos_;
  char pad1_[CACHE_LINE];
  std::atomic<size_t> dequeue_pos_;
  char pad2_[CACHE_LINE];
};

/* ----------------------------------------------------------------------- Queue
 * Bounded (maxsize > 0): `count_` reserves a place before an item enters the ring, so
 * the bound is exact whatever the ring's power-of-two capacity.
 * Unbounded (maxsize == 0): the ring takes what fits; the rest goes to `overflow_`
 * (under the mutex). While the overflow is non-empty producers append to it, and
 * consumers take from the ring first, so each producer's items stay in FIFO order.
 *
 * Parking (no lost wake-up): a waiter increments its waiting counter, issues a
 * seq_cst fence and re-checks the queue, all while holding mu; the other side
 * publishes, issues a seq_cst fence, and only if it sees a waiter takes mu to notify.
 * Either the re-check sees the item/space or the notifier sees the waiter, and since
 * notification happens under mu it cannot fall between the re-check and the wait.
 *
 * Closing (no stranded item): producers announce themselves in `inflight_` before
 * they check `closing_`; close() sets `closing_`, waits for `inflight_` to reach zero,
 * and only then sets `closed_`, which is what consumers look at. So when a consumer
 * sees `closed_`, every accepted item is fully in the queue: "closed and nothing to
 * pop" really means empty, and a worker that exits on it leaves nothing behind.
 */
class Queue {
 public:
  explicit Queue(size_t maxsize, size_t ring_capacity = 1024)
      : ring_(maxsize ? maxsize : ring_capacity), maxsize_(maxsize), sync_(new Sync()) {}
  /* sync_ may have been replaced after a fork; the old one is deliberately leaked. */
  ~Queue() { delete sync_; }
  Queue(const Queue &) = delete;
  Queue &operator=(const Queue &) = delete;

  size_t maxsize() const { return maxsize_; }
  bool closed() const { return closing_.load(std::memory_order_acquire); }
  size_t size() const {
    ptrdiff_t n = count_.load(std::memory_order_seq_cst) +
                  (ptrdiff_t)overflow_len_.load(std::memory_order_seq_cst);
    return n > 0 ? (size_t)n : 0;
  }
  int idle() const { return idle_.load(std::memory_order_seq_cst); }
  void add_idle(int n) { idle_.fetch_add(n, std::memory_order_relaxed); }

  /* Retire requests: asks `n` busy workers to exit after the item they are running
   * (a pool shrunk while saturated never goes idle, so it could not shrink otherwise).
   * Replaces any earlier request. A worker checks with claim_retire() after each item:
   * one relaxed load when there is no request. */
  void request_retire(long n) { retire_.store(n > 0 ? n : 0, std::memory_order_relaxed); }
  long retire_requested() const { return retire_.load(std::memory_order_relaxed); }
  bool claim_retire() {
    long n = retire_.load(std::memory_order_relaxed);
    while (n > 0) {
      if (retire_.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }

  /* Non-blocking. OK, FULL or CLOSED. */
  int try_push(void *p) {
    inflight_.fetch_add(1, std::memory_order_seq_cst);
    int st = push_announced(p, false);
    inflight_.fetch_sub(1, std::memory_order_seq_cst);
    if (st == OK) wake_consumer();
    return st;
  }

  /* Blocks while full (bounded queues only). timeout < 0: forever. OK, TIMEOUT, CLOSED. */
  int push(void *p, double timeout) {
    int st = try_push(p);
    if (st != FULL || timeout == 0) return st == FULL ? TIMEOUT : st;
    auto deadline = std::chrono::steady_clock::now() + to_duration(timeout);
    std::unique_lock<std::mutex> lk(sync_->mu, std::defer_lock);
    lock_politely(lk);
    producers_waiting_.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (;;) {
      inflight_.fetch_add(1, std::memory_order_seq_cst);
      st = push_announced(p, true);
      inflight_.fetch_sub(1, std::memory_order_seq_cst);
      if (st != FULL) break;
      if (timeout < 0) {
        sync_->not_full.wait(lk);
      } else if (sync_->not_full.wait_until(lk, deadline) == std::cv_status::timeout) {
        inflight_.fetch_add(1, std::memory_order_seq_cst);
        st = push_announced(p, true);
        inflight_.fetch_sub(1, std::memory_order_seq_cst);
        if (st == FULL) st = TIMEOUT;
        break;
      }
    }
    producers_waiting_.fetch_sub(1, std::memory_order_relaxed);
    if (st == OK) {
      /* We hold mu: notify a parked consumer directly. */
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (consumers_waiting_.load(std::memory_order_seq_cst) > 0) sync_->not_empty.notify_one();
    }
    return st;
  }

  /* Non-blocking. OK, EMPTY, or CLOSED (closed and empty). */
  int try_pop(void **p) { return pop_impl(p, false); }

  /* Blocks while empty. timeout < 0: forever. OK, TIMEOUT or CLOSED (closed and empty).
   *
   * Before parking, one consumer at a time spins for up to `spin_ns`: a worker that
   * just finished a task usually sees the next one within microseconds, far cheaper
   * than a futex sleep and wake-up (8-17 us each here). Only one spins so that idle
   * workers never take more than one core from the threads producing the work; the
   * rest park at once, and an idle pool stops spinning after spin_ns.
   * Hand-off rule: producers wake a parked consumer only when nobody spins; a
   * consumer that gets an item while more are queued wakes the next one, so parallel
   * (GIL-releasing) work fans out to every worker. */
  int pop(void **p, double timeout, long spin_ns, bool worker = false) {
    int st = pop_impl(p, false, worker);
    if (st != EMPTY) return st;
    bool spinner = false;
    if (spin_ns > 0) {
      int expected = 0;
      spinner = spinning_.compare_exchange_strong(expected, 1, std::memory_order_seq_cst);
    }
    if (spinner) {
      auto end = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns);
      for (unsigned i = 1;; i++) {
        st = pop_impl(p, false, worker);
        if (st != EMPTY) {
          spinning_.store(0, std::memory_order_seq_cst);
          if (st == OK) wake_next();
          return st;
        }
        FP_CPU_RELAX();
        if ((i & 63) == 0) {
          if (std::chrono::steady_clock::now() >= end) break;
          /* Oversubscribed (more runnable threads than cores), a spinner would take the
           * core the producer needs: let the scheduler run someone else now and then. */
          std::this_thread::yield();
        }
      }
    }
    auto deadline = std::chrono::steady_clock::now() + to_duration(timeout < 0 ? 0 : timeout);
    std::unique_lock<std::mutex> lk(sync_->mu, std::defer_lock);
    lock_politely(lk);
    consumers_waiting_.fetch_add(1, std::memory_order_seq_cst);
    /* A spinner gives up its role only once registered as a waiter: a producer that
     * saw it spinning (and so notified nobody) is then caught by the re-check below. */
    if (spinner) spinning_.store(0, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (;;) {
      st = pop_impl(p, true, worker);
      if (st != EMPTY) break;
      if (timeout < 0) {
        sync_->not_empty.wait(lk);
      } else if (timeout == 0 ||
                 sync_->not_empty.wait_until(lk, deadline) == std::cv_status::timeout) {
        st = pop_impl(p, true, worker);
        if (st == EMPTY) st = TIMEOUT;
        break;
      }
    }
    consumers_waiting_.fetch_sub(1, std::memory_order_relaxed);
    if (st == OK && size() > 0 && consumers_waiting_.load(std::memory_order_seq_cst) > 0 &&
        spinning_.load(std::memory_order_seq_cst) == 0)
      sync_->not_empty.notify_one(); /* we hold mu */
    return st;
  }

  /* No further push succeeds; waiters wake up. Consumers still drain what is queued. */
  void close() {
    closing_.store(true, std::memory_order_seq_cst);
    while (inflight_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
    Guard lk(sync_->mu);
    closed_.store(true, std::memory_order_seq_cst);
    sync_->not_empty.notify_all();
    sync_->not_full.notify_all();
  }

  /* Takes every queued item (for cancel_futures and shutdown reports). */
  void drain(std::vector<void *> &out) {
    void *p;
    while (pop_impl(&p, false) == OK) out.push_back(p);
  }

  /* Fork support. Before fork: hold mu so the overflow list is consistent in the child.
   * After, in the parent: release it. In the child: only this thread exists; salvage the
   * items and start over with fresh synchronisation objects. The old ones are leaked on
   * purpose: destroying a condition variable that had (now vanished) waiters can block. */
  void lock_for_fork() { sync_->mu.lock(); }
  void unlock_after_fork() { sync_->mu.unlock(); }
  void reset_after_fork(std::vector<void *> &out) {
    ring_.salvage_after_fork(out);
    for (void *p : overflow_) out.push_back(p);
    overflow_.clear();
    overflow_len_.store(0);
    count_.store(0);
    inflight_.store(0);
    consumers_waiting_.store(0);
    producers_waiting_.store(0);
    spinning_.store(0);
    idle_.store(0);
    retire_.store(0);
    sync_ = new Sync();
  }

 private:
  struct Sync {
    std::mutex mu;
    std::condition_variable not_empty;
    std::condition_variable not_full;
  };

  static std::chrono::steady_clock::duration to_duration(double seconds) {
    if (seconds > 1e9) seconds = 1e9; /* ~31 years: avoids overflowing the clock */
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(seconds));
  }

  /* Caller has incremented inflight_. `locked`: caller holds mu. OK, FULL or CLOSED. */
  int push_announced(void *p, bool locked) {
    if (closing_.load(std::memory_order_seq_cst)) return CLOSED;
    if (maxsize_) {
      ptrdiff_t c = count_.load(std::memory_order_relaxed);
      do {
        if (c >= (ptrdiff_t)maxsize_) return FULL;
      } while (!count_.compare_exchange_weak(c, c + 1, std::memory_order_relaxed));
      /* The slot may still be mid-release by a consumer; it is ours, wait for it. */
      while (!ring_.push(p)) std::this_thread::yield();
      return OK;
    }
    if (overflow_len_.load(std::memory_order_seq_cst) == 0) {
      count_.fetch_add(1, std::memory_order_relaxed);
      if (ring_.push(p)) return OK;
      count_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (locked) {
      push_overflow_locked(p);
    } else {
      Guard lk(sync_->mu);
      push_overflow_locked(p);
    }
    return OK;
  }

  void push_overflow_locked(void *p) {
    overflow_.push_back(p);
    overflow_len_.fetch_add(1, std::memory_order_seq_cst);
  }

  /* `locked`: caller holds mu. Reads closed_ *before* trying to pop: if it was set,
   * every producer had finished, so a failed pop proves the queue empty.
   * `worker`: the caller counts in idle_ and stops being idle with this item. It leaves
   * idle_ before the item leaves size(): a submitter reads size() then idle() to decide
   * whether to start a worker, and must never see the item gone while its taker still
   * looks idle (it would start none, and the next task would wait behind this one). */
  int pop_impl(void **p, bool locked, bool worker = false) {
    bool was_closed = closed_.load(std::memory_order_acquire);
    if (ring_.pop(p)) {
      if (worker) idle_.fetch_sub(1, std::memory_order_seq_cst);
      count_.fetch_sub(1, std::memory_order_seq_cst);
      if (maxsize_) {
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (producers_waiting_.load(std::memory_order_seq_cst) > 0) {
          if (locked) {
            sync_->not_full.notify_one();
          } else {
            Guard lk(sync_->mu);
            sync_->not_full.notify_one();
          }
        }
      }
      return OK;
    }
    if (overflow_len_.load(std::memory_order_seq_cst) != 0) {
      if (locked) {
        if (pop_overflow_locked(p, worker)) return OK;
      } else {
        Guard lk(sync_->mu);
        if (pop_overflow_locked(p, worker)) return OK;
      }
    }
    return was_closed ? CLOSED : EMPTY;
  }

  /* The overflow's front may be taken only while the ring is truly empty -- not
   * merely showing an empty slot that a producer is still writing (that producer wakes
   * a consumer when done): a producer's items are FIFO across ring and overflow only
   * because it appends to the overflow after its earlier pushes to the ring completed.
   * The check must be made here, under mu: while we hold it the overflow cannot change,
   * so any older item of the front item's producer is already in the ring and counted
   * by unclaimed(). (Checked before taking mu, the overflow could drain and refill
   * behind a newer ring item while we waited for the lock.) */
  bool pop_overflow_locked(void **p, bool worker = false) {
    if (overflow_.empty() || ring_.unclaimed() != 0) return false;
    *p = overflow_.front();
    overflow_.pop_front();
    if (worker) idle_.fetch_sub(1, std::memory_order_seq_cst);
    overflow_len_.fetch_sub(1, std::memory_order_seq_cst);
    return true;
  }

  void wake_consumer() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (spinning_.load(std::memory_order_seq_cst) == 0 &&
        consumers_waiting_.load(std::memory_order_seq_cst) > 0) {
      Guard lk(sync_->mu);
      sync_->not_empty.notify_one();
    }
  }

  /* After taking an item: if more are queued and nobody spins, wake a parked consumer. */
  void wake_next() {
    if (size() > 0) wake_consumer();
  }

  Ring ring_;
  const size_t maxsize_;
  Sync *sync_;
  std::deque<void *> overflow_;
  char pad0_[CACHE_LINE];
  std::atomic<ptrdiff_t> count_{0};
  std::atomic<size_t> overflow_len_{0};
  std::atomic<bool> closing_{false};
  std::atomic<bool> closed_{false};
  char pad1_[CACHE_LINE];
  std::atomic<int> inflight_{0};
  std::atomic<int> consumers_waiting_{0};
  std::atomic<int> producers_waiting_{0};
  std::atomic<int> spinning_{0};
  std::atomic<int> idle_{0};
  std::atomic<long> retire_{0};
};

/* ---------------------------------------------------------------------- Signal
 * A generation counter with a condition variable, for a consumer that waits (without
 * the GIL) for "something changed" from producers (map results). wait() returns when
 * the generation differs from the one the caller saw before it last checked its data,
 * so a change made between that check and the wait is never missed. */
class Signal {
 public:
  unsigned long long generation() const { return gen_.load(std::memory_order_seq_cst); }
  void notify() {
    gen_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) > 0) {
      Guard lk(mu_);
      cv_.notify_all();
    }
  }
  /* true if the generation moved on, false on timeout (timeout < 0: forever). */
  bool wait(unsigned long long seen, double timeout) {
    std::unique_lock<std::mutex> lk(mu_, std::defer_lock);
    lock_politely(lk);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    auto changed = [&] { return gen_.load(std::memory_order_seq_cst) != seen; };
    bool ok;
    if (timeout < 0) {
      cv_.wait(lk, changed);
      ok = true;
    } else {
      ok = cv_.wait_for(lk, std::chrono::duration<double>(timeout > 1e9 ? 1e9 : timeout), changed);
    }
    waiters_.fetch_sub(1, std::memory_order_seq_cst);
    return ok;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<unsigned long long> gen_{0};
  std::atomic<int> waiters_{0};
};

/* Seconds on a monotonic clock, for measuring how long a chunk of map work took. */
static inline double monotonic() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace fp

#endif /* FP_QUEUE_H */
