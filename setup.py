"""The compiled modules, declared here because setuptools still calls its
`[tool.setuptools.ext-modules]` table in pyproject.toml experimental and warns
about it at every build. Everything else about the package is in pyproject.toml.
setuptools compiles the .pyx sources with Cython, which pyproject.toml's
build requirements fetch."""

from setuptools import Extension, setup

# Module name -> its source: stream_detector/core/tally.pyx is stream_detector.core.tally.
SOURCES = [
    "stream_detector/core/_counting.pyx",
    "stream_detector/core/watermark.pyx",
    "stream_detector/core/buckets.pyx",
    "stream_detector/core/tally.pyx",
    "stream_detector/core/reporters.pyx",
    "stream_detector/core/models/_seasonal_kernel.pyx",
]

setup(ext_modules=[
    Extension(source.removesuffix(".pyx").replace("/", "."), [source]) for source in SOURCES
])
