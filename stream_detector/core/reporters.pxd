from libc.stdint cimport uint64_t


cdef class HourSet:
    cdef uint64_t* slots
    cdef Py_ssize_t capacity
    cdef Py_ssize_t size
    cdef Py_ssize_t _slot(self, uint64_t key) noexcept
    cdef bint add(self, uint64_t key) except -1
    cdef int _grow(self) except -1


cdef uint64_t pair_key_utf8(const char* service, Py_ssize_t service_size, const char* reporter,
                            Py_ssize_t reporter_size) noexcept nogil
cdef uint64_t pair_key(str service, str reporter) except? 0


cdef class ReporterFilter:
    cdef readonly dict hours
    cpdef HourSet hour_set(self, long long hour)
    cdef long long hour_start(self, long long ts_ms) noexcept
    cdef HourSet pairs_from(self, long long hour_start_ms)
