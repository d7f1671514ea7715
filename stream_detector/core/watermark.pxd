cdef class EventClock:
    cdef readonly long long lateness_ms
    cdef readonly long long idle_timeout_ms
    cdef long long _max_event_ms  # -1 until the first report
    cdef public long long wall_at_max_ms
    cdef void observe(self, long long event_ms, long long wall_ms) noexcept
    cdef bint passed(self, long long bucket_end_ms) noexcept
