# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The rule against one person flooding: a reporter counts once per service per hour.

Hours are clock hours of event time, so the outcome does not depend on the
order reports arrive in, only on which hour they belong to.

Every report with a reporter is checked against, and then joins, the
(service, reporter) pairs of its hour, so the set of an hour holds one
entry per distinct reporter of each service: at a million reports an hour,
a million entries. They are kept as 64-bit keys (FNV-1a over the UTF-8 of
service and reporter, then a final mix) in an open-addressing table of
integers per hour (8 bytes a slot, 2 to 4 slots a pair), where Python
strings in dicts took several times that and cost a dict probe and an
insertion per report. Two pairs
share a key with probability about n^2 / 2^65 (1 in 30 billion hours at a
million pairs an hour); a report whose pair collides would be taken for a
duplicate. The keys are the same in every process, so a snapshot carries them.
The hash is not keyed: someone who crafts reporter ids that collide with
another reporter's pair of the same service and hour could have that
report counted as a duplicate; reporter ids are opaque, so this needs
knowing them.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memset

from stream_detector.core._hashing cimport fnv1a, fnv_offset, mix64

HOUR_MS = 3_600_000
cdef long long C_HOUR_MS = HOUR_MS

cdef Py_ssize_t FIRST_CAPACITY = 1024  # a power of two


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


cdef uint64_t pair_key_utf8(const char* service, Py_ssize_t service_size, const char* reporter,
                            Py_ssize_t reporter_size) noexcept nogil:
    """The key of a (service, reporter) pair given as UTF-8; never 0, which marks an empty slot."""
    cdef uint64_t h = fnv1a(fnv_offset(), service, service_size)
    # 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
    h = fnv1a(h, b"\xff", 1)
    h = mix64(fnv1a(h, reporter, reporter_size))
    return h if h != 0 else 1


cdef uint64_t pair_key(str service, str reporter) except? 0:
    cdef Py_ssize_t service_size, reporter_size
    cdef const char* service_text = PyUnicode_AsUTF8AndSize(service, &service_size)
    cdef const char* reporter_text = PyUnicode_AsUTF8AndSize(reporter, &reporter_size)
    return pair_key_utf8(service_text, service_size, reporter_text, reporter_size)


def reporter_key(str service, str reporter):
    """The key `ReporterFilter` keeps for a pair."""
    return pair_key(service, reporter)


cdef inline uint64_t to_little_endian(uint64_t key) noexcept nogil:
    """The key with its bytes in little-endian order (unchanged on little-endian machines)."""
    cdef uint64_t out = 0
    cdef unsigned char* b = <unsigned char*>&out
    cdef int k
    for k in range(8):
        b[k] = (key >> (8 * k)) & 0xff
    return out


cdef int compare_keys(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


cdef class HourSet:
    """The keys of the (service, reporter) pairs counted in one hour."""

    def __cinit__(self):
        self.capacity = FIRST_CAPACITY
        self.size = 0
        self.slots = <uint64_t*>PyMem_Malloc(self.capacity * sizeof(uint64_t))
        if self.slots == NULL:
            raise MemoryError()
        memset(self.slots, 0, self.capacity * sizeof(uint64_t))

    def __dealloc__(self):
        PyMem_Free(self.slots)

    cdef inline Py_ssize_t _slot(self, uint64_t key) noexcept:
        """The slot holding `key`, or the empty slot where it belongs (linear probing)."""
        cdef Py_ssize_t mask = self.capacity - 1
        cdef Py_ssize_t i = <Py_ssize_t>(key & mask)
        while self.slots[i] != 0 and self.slots[i] != key:
            i = (i + 1) & mask
        return i

    cdef bint add(self, uint64_t key) except -1:
        """Add `key`; False if it was there already."""
        cdef Py_ssize_t i = self._slot(key)
        if self.slots[i] == key:
            return False
        self.slots[i] = key
        self.size += 1
        if 2 * self.size > self.capacity:  # at most half full, so probes stay short
            self._grow()
        return True

    cdef int _grow(self) except -1:
        cdef uint64_t* old = self.slots
        cdef Py_ssize_t old_capacity = self.capacity, i, j, mask
        cdef uint64_t* grown = <uint64_t*>PyMem_Malloc(2 * old_capacity * sizeof(uint64_t))
        if grown == NULL:
            raise MemoryError()
        memset(grown, 0, 2 * old_capacity * sizeof(uint64_t))
        self.slots = grown
        self.capacity = 2 * old_capacity
        mask = self.capacity - 1
        for i in range(old_capacity):
            if old[i] != 0:
                j = <Py_ssize_t>(old[i] & mask)
                while grown[j] != 0:
                    j = (j + 1) & mask
                grown[j] = old[i]
        PyMem_Free(old)
        return 0

    def __contains__(self, uint64_t key):
        return self.slots[self._slot(key)] == key

    def __len__(self):
        return self.size

    def packed(self):
        """The keys, ascending, as little-endian 64-bit integers in one bytes object."""
        cdef uint64_t* keys = <uint64_t*>PyMem_Malloc(max(self.size, 1) * sizeof(uint64_t))
        cdef Py_ssize_t i, n = 0
        if keys == NULL:
            raise MemoryError()
        try:
            for i in range(self.capacity):
                if self.slots[i] != 0:
                    keys[n] = self.slots[i]
                    n += 1
            qsort(keys, n, sizeof(uint64_t), compare_keys)
            for i in range(n):
                keys[i] = to_little_endian(keys[i])
            return PyBytes_FromStringAndSize(<char*>keys, n * sizeof(uint64_t))
        finally:
            PyMem_Free(keys)

    def add_packed(self, bytes packed):
        """Add the keys of a `packed()`."""
        cdef Py_ssize_t i, n = len(packed) // sizeof(uint64_t)
        cdef uint64_t key
        cdef const char* data = packed
        for i in range(n):
            memcpy(&key, data + i * sizeof(uint64_t), sizeof(uint64_t))
            self.add(to_little_endian(key))  # its own inverse


cdef class ReporterFilter:
    """The pairs counted in each recent hour of event time.

    A report with a reporter counts only if its pair is new in the report's
    hour, and then joins it. The counting loop asks for the hour of a report
    (`hour_start`) and its pairs (`pairs_from`) only when the hour changes.

    >>> f = ReporterFilter()
    >>> f.first_report(1_000, "x", "a81f"), f.first_report(2_000, "x", "a81f")
    (True, False)
    >>> f.first_report(HOUR_MS + 1, "x", "a81f"), f.first_report(2_000, "y", "a81f")
    (True, True)
    >>> f.forget_before(HOUR_MS); sorted(f.hours), len(f)
    ([1], 1)
    """

    def __init__(self):
        self.hours = {}

    cpdef HourSet hour_set(self, long long hour):
        """The pairs of `hour` (`ts_ms // HOUR_MS`), created empty on first use."""
        cdef HourSet pairs = self.hours.get(hour)
        if pairs is None:
            pairs = self.hours[hour] = HourSet()
        return pairs

    cdef long long hour_start(self, long long ts_ms) noexcept:
        """Start of the clock hour of event time holding `ts_ms` (not negative)."""
        return ts_ms - ts_ms % C_HOUR_MS

    cdef HourSet pairs_from(self, long long hour_start_ms):
        """The pairs of the hour starting at `hour_start_ms`, created empty on first use."""
        return self.hour_set(hour_start_ms // C_HOUR_MS)

    def first_report(self, long long ts_ms, str service, str reporter):
        """Count this reporter's report of this service at `ts_ms`: True if it is the
        first of its hour (it counts), False if the hour had one already."""
        return self.pairs_from(self.hour_start(ts_ms)).add(pair_key(service, reporter))

    def forget_before(self, long long ts_ms):
        """Drop hours that end before `ts_ms`; no report can land in them any more."""
        horizon = ts_ms // HOUR_MS
        for hour in [h for h in self.hours if h < horizon]:
            del self.hours[hour]

    def state(self):
        """[[hour, packed keys], ...] by hour: the same state always gives the same bytes."""
        return [[hour, (<HourSet>pairs).packed()] for hour, pairs in sorted(self.hours.items())]

    def load_state(self, state):
        """Replace everything by a `state()`."""
        self.hours = {}
        for hour, packed in state:
            self.hour_set(hour).add_packed(packed)

    def __len__(self):
        return sum(len(pairs) for pairs in self.hours.values())
