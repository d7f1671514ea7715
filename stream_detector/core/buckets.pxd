from stream_detector.core.tally cimport BucketTally, SeriesIndex


cdef class BucketCounter:
    cdef readonly long long width_ms
    cdef readonly SeriesIndex index
    cdef readonly dict open
    cdef long long start_of(self, long long ts_ms) noexcept
    cdef BucketTally bucket_at(self, long long start_ms)
