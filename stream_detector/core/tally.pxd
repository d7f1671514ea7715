from libc.stdint cimport int32_t, int64_t, uint64_t


cdef struct Counts:
    uint64_t* keys
    int64_t* counts
    int32_t* slots
    Py_ssize_t size
    Py_ssize_t capacity


cdef struct Name:
    const char* text
    Py_ssize_t size
    int64_t scope
    uint64_t hash
    int64_t row


cdef class Names:
    cdef list _names
    cdef Name* entries
    cdef int32_t* slots
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    cdef Py_ssize_t _slot(self, int64_t scope, const char* text, Py_ssize_t size,
                          uint64_t h) noexcept
    cdef Py_ssize_t find(self, int64_t scope, const char* text, Py_ssize_t size,
                         uint64_t h) noexcept
    cdef Py_ssize_t intern(self, int64_t scope, const char* text, Py_ssize_t size, object name,
                           object new_row) except -1
    cdef Py_ssize_t add(self, int64_t scope, str name, uint64_t h, object new_row,
                        int64_t row) except -1
    cdef int _grow(self) except -1
    cdef Py_ssize_t _checked(self, Py_ssize_t i) except -1


cdef class SeriesIndex:
    cdef readonly Names services
    cdef readonly Names regions
    cdef readonly Names problems
    cdef readonly bint regional
    cdef object new_row
    cdef object new_region_row
    cdef object __weakref__
    cdef Py_ssize_t service(self, const char* text, Py_ssize_t size, object name) except -1
    cdef Py_ssize_t region(self, Py_ssize_t service, const char* text, Py_ssize_t size,
                           object name) except -1
    cdef Py_ssize_t problem(self, const char* text, Py_ssize_t size, object name) except -1


cdef struct Grouping:
    Py_ssize_t* start
    Py_ssize_t* order
    Py_ssize_t owners
    Py_ssize_t items


cdef class BucketTally:
    cdef Counts services
    cdef Counts regions
    cdef Counts problems
    cdef Grouping by_region
    cdef Grouping by_problem
    cdef readonly SeriesIndex index
    cdef int count(self, Py_ssize_t service, Py_ssize_t region, Py_ssize_t problem) except -1
    cdef int _group(self) except -1
    cdef list _counts_at(self, Py_ssize_t k)
