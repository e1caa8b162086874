# Declarations of src/fp_queue.h for Cython (one .pxd per header, as uvloop's includes/).
from libcpp.vector cimport vector

cdef extern from "fp_queue.h" namespace "fp" nogil:
    cdef enum Status "fp::Status":
        OK "fp::OK"
        EMPTY "fp::EMPTY"
        FULL "fp::FULL"
        TIMEOUT "fp::TIMEOUT"
        CLOSED "fp::CLOSED"

    cdef cppclass Queue "fp::Queue":
        Queue(size_t maxsize) except +
        size_t maxsize()
        bint closed()
        size_t size()
        int idle()
        void add_idle(int n)
        void request_retire(long n)
        long retire_requested()
        bint claim_retire()
        int try_push(void *p)
        int push(void *p, double timeout)
        int try_pop(void **p)
        int pop(void **p, double timeout, long spin_ns, bint worker)
        int pop(void **p, double timeout, long spin_ns)
        void close()
        void drain(vector[void *] &out) except +
        void lock_for_fork()
        void unlock_after_fork()
        void reset_after_fork(vector[void *] &out) except +

    cdef cppclass Signal "fp::Signal":
        Signal() except +
        unsigned long long generation()
        void notify()
        bint wait(unsigned long long seen, double timeout)

    double monotonic "fp::monotonic"()

    void set_block_hooks "fp::set_block_hooks"(void *(*begin)() noexcept nogil,
                                                void (*end)(void *) noexcept nogil)
