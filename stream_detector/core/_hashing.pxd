# cython: language_level=3
"""64-bit hashing of UTF-8 text, shared by the compiled tables of the core.

FNV-1a over the bytes, then murmur3's finaliser: FNV alone is fast on short
names but its low bits, which pick a table slot, mix poorly.
"""

from libc.stdint cimport uint64_t


cdef inline uint64_t fnv1a(uint64_t h, const char* data, Py_ssize_t n) noexcept nogil:
    """Continue an FNV-1a hash `h` (start from `fnv_offset()`) over `n` bytes."""
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>data[i]) * 1099511628211ULL
    return h


cdef inline uint64_t mix64(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t fnv_offset() noexcept nogil:
    """FNV-1a's starting value."""
    return 14695981039346656037ULL
