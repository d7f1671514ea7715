"""stream_detector: outage detection from crowd-sourced problem reports on Kafka."""

__version__ = "0.1.0"
