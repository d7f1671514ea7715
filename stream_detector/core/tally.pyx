# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Report counts of event-time buckets, kept in arrays keyed by interned names.

A partition sees the same few thousand services, regions and problem
categories over and over. `SeriesIndex` gives each name a small integer the
first time it appears (and each scored series its model bank row), found
again straight from the message's UTF-8 bytes, so counting a report builds
no string and touches no dict. `BucketTally` holds one bucket's counts by
those integers, in the order they first appeared, and lists the bucket's
series as the arrays the model bank scores.

Python sees a tally as a read-only mapping in the shape the rest of the
code speaks, `{service: [reports, {region: n}, {problem: n}]}`, built only
for whoever asks: the incident rules for the few series where something
happens, snapshots, tests.
"""

from collections.abc import Mapping

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcmp, memset

from stream_detector.core._hashing cimport fnv1a, fnv_offset, mix64

import numpy as np


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


cdef inline uint64_t name_hash(int64_t scope, const char* text, Py_ssize_t size) noexcept nogil:
    return mix64(fnv1a(fnv_offset(), text, size) ^ (<uint64_t>scope * 0x9E3779B97F4A7C15ULL))


cdef void* allocate(Py_ssize_t n, size_t item) except NULL:
    cdef void* p = PyMem_Malloc(max(n, 1) * item)
    if p == NULL:
        raise MemoryError()
    return p


cdef void* reallocate(void* p, Py_ssize_t n, size_t item) except NULL:
    """`p` resized to `n` items; on failure `p` is left as it was."""
    cdef void* q = PyMem_Realloc(p, max(n, 1) * item)
    if q == NULL:
        raise MemoryError()
    return q


cdef int32_t* empty_slots(Py_ssize_t n) except NULL:
    """The slots of an empty open-addressing table (0 marks an empty slot)."""
    cdef int32_t* slots = <int32_t*>allocate(n, sizeof(int32_t))
    memset(slots, 0, n * sizeof(int32_t))
    return slots


# --- counts by 64-bit key, in the order keys first appear -------------------
#
# An open-addressing table of entry indices (plus one; 0 is empty) over
# parallel key and count arrays, at most half full.

cdef int counts_init(Counts* c, Py_ssize_t capacity) except -1:
    c.size = 0
    c.capacity = capacity
    c.keys = <uint64_t*>allocate(capacity, sizeof(uint64_t))
    c.counts = <int64_t*>allocate(capacity, sizeof(int64_t))
    c.slots = empty_slots(2 * capacity)
    return 0


cdef void counts_free(Counts* c) noexcept:
    PyMem_Free(c.keys)
    PyMem_Free(c.counts)
    PyMem_Free(c.slots)


cdef inline Py_ssize_t counts_slot(Counts* c, uint64_t key) noexcept nogil:
    """The slot of `key`, or the empty slot where it belongs."""
    cdef Py_ssize_t mask = 2 * c.capacity - 1
    cdef Py_ssize_t i = <Py_ssize_t>(mix64(key) & mask)
    cdef int32_t s
    while True:
        s = c.slots[i]
        if s == 0 or c.keys[s - 1] == key:
            return i
        i = (i + 1) & mask


cdef inline Py_ssize_t counts_find(Counts* c, uint64_t key) noexcept nogil:
    """The entry of `key`; -1 if it has none."""
    return c.slots[counts_slot(c, key)] - 1


cdef int counts_grow(Counts* c) except -1:
    """Double the room. On MemoryError the table is as it was (perhaps with spare room
    in its arrays), so nothing is ever left pointing at freed memory."""
    cdef Py_ssize_t capacity = 2 * c.capacity, i
    cdef int32_t* slots = empty_slots(2 * capacity)
    try:
        c.keys = <uint64_t*>reallocate(c.keys, capacity, sizeof(uint64_t))
        c.counts = <int64_t*>reallocate(c.counts, capacity, sizeof(int64_t))
    except MemoryError:
        PyMem_Free(slots)
        raise
    PyMem_Free(c.slots)
    c.slots = slots
    c.capacity = capacity
    for i in range(c.size):
        c.slots[counts_slot(c, c.keys[i])] = <int32_t>(i + 1)
    return 0


cdef inline Py_ssize_t counts_add(Counts* c, uint64_t key, int64_t n) except -1:
    """Add `n` to the count of `key`; returns its entry."""
    cdef Py_ssize_t i = counts_slot(c, key), entry = c.slots[i] - 1
    if entry >= 0:
        c.counts[entry] += n
        return entry
    if c.size == c.capacity:
        counts_grow(c)
        i = counts_slot(c, key)
    entry = c.size
    c.keys[entry] = key
    c.counts[entry] = n
    c.slots[i] = <int32_t>(entry + 1)
    c.size += 1
    return entry


# --- names -------------------------------------------------------------------

cdef class Names:
    """Distinct names, each with a scope (a region's is its service), a dense id and a row.

    The row is the name's series in the model bank, -1 where it has none.
    """

    def __cinit__(self):
        self._names = []
        self.size = 0
        self.capacity = 0
        self.entries = NULL
        self.slots = NULL
        self._grow()

    def __dealloc__(self):
        PyMem_Free(self.entries)
        PyMem_Free(self.slots)

    cdef inline Py_ssize_t _slot(self, int64_t scope, const char* text, Py_ssize_t size,
                                 uint64_t h) noexcept:
        cdef Py_ssize_t mask = 2 * self.capacity - 1
        cdef Py_ssize_t i = <Py_ssize_t>(h & mask), j
        cdef Name* name
        while True:
            j = self.slots[i] - 1
            if j < 0:
                return i
            name = &self.entries[j]
            if (name.hash == h and name.scope == scope and name.size == size
                    and memcmp(name.text, text, size) == 0):
                return i
            i = (i + 1) & mask

    cdef Py_ssize_t find(self, int64_t scope, const char* text, Py_ssize_t size,
                         uint64_t h) noexcept:
        """The id of the name with these UTF-8 bytes in `scope`; -1 if it has none."""
        return self.slots[self._slot(scope, text, size, h)] - 1

    cdef Py_ssize_t intern(self, int64_t scope, const char* text, Py_ssize_t size, object name,
                           object new_row) except -1:
        """The id of the name with these UTF-8 bytes in `scope`, added if new: `name` is
        its str, or None to decode it from the bytes (which must then be valid UTF-8);
        its row comes from `new_row()`, or is -1 if that is None."""
        cdef uint64_t h = name_hash(scope, text, size)
        cdef Py_ssize_t i = self.find(scope, text, size, h)
        if i >= 0:
            return i
        return self.add(scope, PyUnicode_DecodeUTF8(text, size, NULL) if name is None else name,
                        h, new_row, -1)

    cdef Py_ssize_t add(self, int64_t scope, str name, uint64_t h, object new_row,
                        int64_t row) except -1:
        """Give `name`, not known in `scope`, the next id, with the row `new_row()`
        gives (or `row` if `new_row` is None).

        Everything that can fail comes before the name is added, and the row,
        which cannot be taken back, last: a failure adds nothing.
        """
        cdef Py_ssize_t i = self.size, size
        cdef const char* text = PyUnicode_AsUTF8AndSize(name, &size)
        if i == self.capacity:
            self._grow()
        self._names.append(name)  # keeps the UTF-8 that `text` points into alive
        if new_row is not None:
            try:
                row = new_row()
            except BaseException:
                self._names.pop()
                raise
        cdef Name* entry = &self.entries[i]
        entry.text, entry.size, entry.scope, entry.hash, entry.row = text, size, scope, h, row
        self.slots[self._slot(scope, text, size, h)] = <int32_t>(i + 1)
        self.size += 1
        return i

    cdef int _grow(self) except -1:
        """Double the room (at first, make some), keeping the slots at most half full.
        On MemoryError the table is as it was."""
        cdef Py_ssize_t capacity = max(2 * self.capacity, 64), i
        cdef int32_t* slots = empty_slots(2 * capacity)
        try:
            self.entries = <Name*>reallocate(self.entries, capacity, sizeof(Name))
        except MemoryError:
            PyMem_Free(slots)
            raise
        PyMem_Free(self.slots)
        self.slots = slots
        self.capacity = capacity
        cdef Name* entries = self.entries
        for i in range(self.size):
            self.slots[self._slot(entries[i].scope, entries[i].text, entries[i].size,
                                  entries[i].hash)] = <int32_t>(i + 1)
        return 0

    def id_of(self, int64_t scope, str name):
        """The id of `name` in `scope`; -1 if it has none."""
        cdef Py_ssize_t size
        cdef const char* text = PyUnicode_AsUTF8AndSize(name, &size)
        return self.find(scope, text, size, name_hash(scope, text, size))

    cdef inline Py_ssize_t _checked(self, Py_ssize_t i) except -1:
        if not 0 <= i < self.size:
            raise IndexError(f"no name has id {i}")
        return i

    def name(self, Py_ssize_t i):
        return self._names[self._checked(i)]

    def scope(self, Py_ssize_t i):
        return self.entries[self._checked(i)].scope

    def row(self, Py_ssize_t i):
        return self.entries[self._checked(i)].row

    @property
    def names(self):
        """Every name, by id (a copy: the table's own list must not change)."""
        return tuple(self._names)

    def __len__(self):
        return self.size


cdef class SeriesIndex:
    """The services, regions and problem categories a partition has counted.

    Every service is a series; with `regional`, so is every region of a
    service. A series gets its model bank row from `new_row()` when its
    first report is counted.
    """

    def __cinit__(self):
        # In __cinit__, so that no instance can exist without its tables.
        self.services = Names()
        self.regions = Names()
        self.problems = Names()

    def __init__(self, new_row, bint regional):
        self.new_row = new_row
        self.new_region_row = new_row if regional else None
        self.regional = regional

    cdef Py_ssize_t service(self, const char* text, Py_ssize_t size, object name) except -1:
        """The id of a service from its UTF-8 bytes, added if new (`name` is its str, or
        None to decode it from the bytes, which must then be valid UTF-8)."""
        return self.services.intern(0, text, size, name, self.new_row)

    cdef Py_ssize_t region(self, Py_ssize_t service, const char* text, Py_ssize_t size,
                           object name) except -1:
        """The id of a region of the service with id `service` (see `service`)."""
        return self.regions.intern(service, text, size, name, self.new_region_row)

    cdef Py_ssize_t problem(self, const char* text, Py_ssize_t size, object name) except -1:
        """The id of a problem category (see `service`); categories have no series."""
        return self.problems.intern(0, text, size, name, None)

    def service_id(self, str service):
        """The id of a service; -1 if it was never counted."""
        return self.services.id_of(0, service)

    def row_of(self, str service, region=None):
        """The bank row of a series; None if it has none."""
        cdef Py_ssize_t i = self.services.id_of(0, service)
        if i >= 0 and region is not None:
            i = self.regions.id_of(i, region)
            return None if i < 0 or self.regions.entries[i].row < 0 else self.regions.entries[i].row
        return None if i < 0 else self.services.entries[i].row

    def items(self):
        """[[service, row, {region: row}], ...] of every series, in the order they were added."""
        cdef Py_ssize_t i
        cdef Name* region
        out = [[self.services._names[i], self.services.entries[i].row, {}]
               for i in range(self.services.size)]
        for i in range(self.regions.size):
            region = &self.regions.entries[i]
            if region.row >= 0:
                out[region.scope][2][self.regions._names[i]] = region.row
        return out

    def load(self, series):
        """Add the series of an `items()` with their rows; call before counting anything."""
        cdef Py_ssize_t i, size
        cdef const char* text
        for service, row, regions in series:
            text = PyUnicode_AsUTF8AndSize(service, &size)
            i = self.services.add(0, service, name_hash(0, text, size), None, row)
            for region, region_row in regions.items():
                text = PyUnicode_AsUTF8AndSize(region, &size)
                self.regions.add(i, region, name_hash(i, text, size), None, region_row)


cdef int regroup(Grouping* g, Py_ssize_t owners, Py_ssize_t items,
                 const Py_ssize_t* owner) except -1:
    """Order `items` by their owner, stably (a counting sort): owner k's items are
    `order[start[k]:start[k + 1]]`, in their own order."""
    cdef Py_ssize_t k, j
    g.start = <Py_ssize_t*>reallocate(g.start, owners + 1, sizeof(Py_ssize_t))
    g.order = <Py_ssize_t*>reallocate(g.order, items, sizeof(Py_ssize_t))
    g.owners = g.items = -1  # not valid until done
    memset(g.start, 0, (owners + 1) * sizeof(Py_ssize_t))
    for j in range(items):
        if not 0 <= owner[j] < owners:
            raise RuntimeError("a tally counted a region or problem without its service")
        g.start[owner[j] + 1] += 1
    for k in range(owners):
        g.start[k + 1] += g.start[k]
    # start[k + 1] is now where owner k's items end. Place items from the last,
    # each just below its owner's end, which moves that end down to its start.
    for j in range(items - 1, -1, -1):
        g.start[owner[j] + 1] -= 1
        g.order[g.start[owner[j] + 1]] = j
    for k in range(owners):  # so start[k + 1] holds owner k's start: move down by one
        g.start[k] = g.start[k + 1]
    g.start[owners] = items
    g.owners, g.items = owners, items
    return 0


cdef class BucketTally:
    """The counts of one bucket: per service, per region of a service, per problem of a service.

    As a mapping it is a read-only view, `{service: [reports, {region: n},
    {problem: n}]}`, whose values are built afresh by each lookup.

    >>> index = SeriesIndex(iter(range(100)).__next__, regional=True)
    >>> tally = BucketTally(index)
    >>> tally.add("x", 3, {"US": 2}, {"login": 3}); tally.add("y", 1, {}, {})
    >>> tally.to_dict()
    {'x': [3, {'US': 2}, {'login': 3}], 'y': [1, {}, {}]}
    >>> rows, reports, first, services, region_at, regions = tally.listing()
    >>> rows.tolist(), reports.tolist(), first.tolist(), region_at.tolist()
    ([0, 1, 2], [3, 2, 1], [0, 2], [1])
    """

    def __cinit__(self, SeriesIndex index not None):
        self.index = index
        counts_init(&self.services, 16)
        counts_init(&self.regions, 32)
        counts_init(&self.problems, 32)
        self.by_region.start = self.by_region.order = NULL
        self.by_problem.start = self.by_problem.order = NULL
        self.by_region.owners = self.by_problem.owners = -1

    def __dealloc__(self):
        counts_free(&self.services)
        counts_free(&self.regions)
        counts_free(&self.problems)
        PyMem_Free(self.by_region.start)
        PyMem_Free(self.by_region.order)
        PyMem_Free(self.by_problem.start)
        PyMem_Free(self.by_problem.order)

    cdef int count(self, Py_ssize_t service, Py_ssize_t region, Py_ssize_t problem) except -1:
        """Count one report of the service with id `service` (region and problem -1 if none)."""
        counts_add(&self.services, service, 1)
        if region >= 0:
            counts_add(&self.regions, region, 1)
        if problem >= 0:
            counts_add(&self.problems, (<uint64_t>service << 32) | <uint64_t>problem, 1)
        return 0

    def add(self, str service, int64_t reports, dict regions, dict problems):
        """Add a service's counts in the mapping's shape (as a snapshot keeps them)."""
        cdef Py_ssize_t size
        cdef const char* text = PyUnicode_AsUTF8AndSize(service, &size)
        cdef Py_ssize_t i = self.index.service(text, size, service), j
        counts_add(&self.services, i, reports)
        for region, n in regions.items():
            text = PyUnicode_AsUTF8AndSize(region, &size)
            counts_add(&self.regions, self.index.region(i, text, size, region), n)
        for problem, n in problems.items():
            text = PyUnicode_AsUTF8AndSize(problem, &size)
            j = self.index.problem(text, size, problem)
            counts_add(&self.problems, (<uint64_t>i << 32) | <uint64_t>j, n)

    cdef int _group(self) except -1:
        """Group the region and problem entries by their service's entry, unless no
        entry was added since they were last grouped (counts are read live)."""
        cdef Py_ssize_t n = self.services.size, j
        cdef Py_ssize_t* owner
        cdef Name* regions = self.index.regions.entries
        if self.by_region.owners != n or self.by_region.items != self.regions.size:
            owner = <Py_ssize_t*>allocate(self.regions.size, sizeof(Py_ssize_t))
            try:
                for j in range(self.regions.size):
                    owner[j] = counts_find(&self.services,
                                           <uint64_t>regions[self.regions.keys[j]].scope)
                regroup(&self.by_region, n, self.regions.size, owner)
            finally:
                PyMem_Free(owner)
        if self.by_problem.owners != n or self.by_problem.items != self.problems.size:
            owner = <Py_ssize_t*>allocate(self.problems.size, sizeof(Py_ssize_t))
            try:
                for j in range(self.problems.size):
                    owner[j] = counts_find(&self.services, self.problems.keys[j] >> 32)
                regroup(&self.by_problem, n, self.problems.size, owner)
            finally:
                PyMem_Free(owner)
        return 0

    def listing(self):
        """The bucket's series as arrays, in the order the model bank scores them.

        Each service comes first, then (for a regional index) its regions,
        each in the order of their first report in the bucket. Returns the
        bank rows and reports of the series; then per service (in the order
        of `service_entry`) its position and id; then per region (in the
        order of `region_entry`) its position (-1 when regions are not
        listed) and id.
        """
        self._group()
        cdef Py_ssize_t n_services = self.services.size, n_regions = self.regions.size
        cdef bint regional = self.index.regional
        cdef Py_ssize_t k, j, m, at = 0
        cdef Name* services_named = self.index.services.entries
        cdef Name* regions_named = self.index.regions.entries
        cdef Py_ssize_t listed = n_services + (n_regions if regional else 0)
        rows = np.empty(listed, dtype=np.intp)
        reports = np.empty(listed, dtype=np.int64)
        first = np.empty(n_services, dtype=np.intp)
        services = np.empty(n_services, dtype=np.intp)
        region_at = np.full(n_regions, -1, dtype=np.intp)
        regions = np.empty(n_regions, dtype=np.intp)
        cdef Py_ssize_t[::1] rows_v = rows, first_v = first, services_v = services
        cdef Py_ssize_t[::1] region_at_v = region_at, regions_v = regions
        cdef int64_t[::1] reports_v = reports
        for j in range(n_regions):
            regions_v[j] = <Py_ssize_t>self.regions.keys[j]
        for k in range(n_services):
            first_v[k] = at
            services_v[k] = <Py_ssize_t>self.services.keys[k]
            rows_v[at] = <Py_ssize_t>services_named[self.services.keys[k]].row
            reports_v[at] = self.services.counts[k]
            at += 1
            if regional:
                for m in range(self.by_region.start[k], self.by_region.start[k + 1]):
                    j = self.by_region.order[m]
                    region_at_v[j] = at
                    rows_v[at] = <Py_ssize_t>regions_named[self.regions.keys[j]].row
                    reports_v[at] = self.regions.counts[j]
                    at += 1
        return rows, reports, first, services, region_at, regions

    def service_entry(self, Py_ssize_t service):
        """The position of the service with id `service` among the bucket's; -1 if it has none."""
        return counts_find(&self.services, service)

    def region_entry(self, Py_ssize_t region):
        """The position of the region with id `region` among the bucket's; -1 if it has none."""
        return counts_find(&self.regions, region)

    cdef list _counts_at(self, Py_ssize_t k):
        """[reports, {region: n}, {problem: n}] of the service at entry `k`."""
        cdef Py_ssize_t m, j
        cdef list region_names = self.index.regions._names
        cdef list problem_names = self.index.problems._names
        cdef dict regions = {}, problems = {}
        for m in range(self.by_region.start[k], self.by_region.start[k + 1]):
            j = self.by_region.order[m]
            regions[region_names[self.regions.keys[j]]] = self.regions.counts[j]
        for m in range(self.by_problem.start[k], self.by_problem.start[k + 1]):
            j = self.by_problem.order[m]
            problems[problem_names[self.problems.keys[j] & 0xffffffffULL]] = (
                self.problems.counts[j]
            )
        return [self.services.counts[k], regions, problems]

    def counts_of(self, Py_ssize_t service):
        """[reports, {region: n}, {problem: n}] of the service with id `service`; None if
        it has no reports in the bucket."""
        cdef Py_ssize_t k = counts_find(&self.services, service)
        if k < 0:
            return None
        self._group()
        return self._counts_at(k)

    def to_dict(self):
        """{service: [reports, {region: n}, {problem: n}]}, all in first-report order."""
        cdef Py_ssize_t k
        cdef list names = self.index.services._names
        self._group()
        return {names[self.services.keys[k]]: self._counts_at(k)
                for k in range(self.services.size)}

    # The mapping's read side, for code that asks about one service by name.

    def get(self, service, default=None):
        if type(service) is not str:
            return default
        cdef Py_ssize_t i = self.index.service_id(service)
        counts = self.counts_of(i) if i >= 0 else None
        return default if counts is None else counts

    def __getitem__(self, service):
        counts = self.get(service)
        if counts is None:
            raise KeyError(service)
        return counts

    def __contains__(self, service):
        return self.get(service) is not None

    def __iter__(self):
        cdef Py_ssize_t k
        cdef list names = self.index.services._names
        return iter([names[self.services.keys[k]] for k in range(self.services.size)])

    def __len__(self):
        return self.services.size

    def keys(self):
        return self.to_dict().keys()

    def items(self):
        return self.to_dict().items()

    def values(self):
        return self.to_dict().values()

    def __eq__(self, other):
        if isinstance(other, BucketTally):
            return self.to_dict() == other.to_dict()
        if isinstance(other, dict):
            return self.to_dict() == other
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"BucketTally({self.to_dict()!r})"


Mapping.register(BucketTally)
