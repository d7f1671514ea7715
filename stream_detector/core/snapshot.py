"""Snapshots of one partition's detector state, as compact versioned bytes.

Everything a partition has learned goes in: open buckets, the event clock,
the reporter filter, every series' model and open incidents, so a restored
detector continues exactly where the snapshot was taken. Each component
gives its own `state()` and takes it back with `load_state()`; this module
only puts them in one document, versions it and reads older versions. The
encoding is orjson over plain lists.

A snapshot records the format version, the model name and the bucket width;
restoring one that does not match the running configuration fails with a
`SnapshotError` saying which, because mixing them would silently corrupt
baselines.
"""

from __future__ import annotations

import ast
import base64
import zlib

import orjson

from stream_detector.core.detector import DetectorConfig, PartitionDetector
from stream_detector.core.reporters import HOUR_MS

FORMAT_VERSION = 6
# Format 3 kept the reporter filter as (service, reporter) pairs of strings;
# they are turned into the keys format 4 keeps, so its state carries over.
# Formats 3 and 4 had no evidence test nor quarter-hour shapes: restored,
# every series starts its evidence from zero (as warmed up, since its model
# is) and every service's shape from flat.
# Formats 3 to 5 had the detector's seasonal model without `slot_prior_reports`
# (every slot an EW mean from its first bucket); the rows are laid out alike,
# so they are restored under the running settings and their slots not yet
# seen on either day type learn as the running model's do.
READABLE_VERSIONS = (3, 4, 5, FORMAT_VERSION)
MAGIC = b"SDS1"


def _before_slot_priors(models: object, bank: object) -> None:
    """A format 3-5 seasonal bank's state, under the running bank's settings when
    they differ from the stored ones only by `slot_prior_reports` (see above)."""
    stored = models.get("config") if isinstance(models, dict) else None
    running = getattr(bank, "config_key", None)
    if not isinstance(stored, str) or not isinstance(running, str) or stored == running:
        return
    try:
        width, direction, options = ast.literal_eval(stored)
        now_width, now_direction, now_options = ast.literal_eval(running)
    except (ValueError, SyntaxError):
        return
    added = dict(now_options)
    added.pop("slot_prior_reports", None)
    if (width, direction) == (now_width, now_direction) and dict(options) == added:
        models["config"] = running


class SnapshotError(ValueError):
    """A snapshot that cannot be restored under the running configuration."""


def encode(detector: PartitionDetector, model_name: str) -> bytes:
    """The detector's whole state as bytes (zlib-compressed orjson behind a magic tag)."""
    d = detector
    doc = {
        "version": FORMAT_VERSION,
        "model": model_name,
        "bucket_ms": d.config.bucket_ms,
        "clock": d.clock.state(),
        "next_close_ms": d.next_close_ms,
        "open": d.counter.state(),
        "reporters": [[hour, base64.b64encode(packed).decode()]
                      for hour, packed in d.reporters.state()],
        "series": d.index.items(),
        "models": d.bank.state(),
        # "incidents", "resolved", "pending", "history"
        **d.incidents.state(),
        "evidence": d.evidence.state(),
        "shape": d.shape.state(),
    }
    return MAGIC + zlib.compress(orjson.dumps(doc), 1)


def decode(data: bytes, config: DetectorConfig, wall_ms: int) -> PartitionDetector:
    """A detector holding the snapshot's state; raises `SnapshotError` if incompatible."""
    if not data.startswith(MAGIC):
        raise SnapshotError("not a stream_detector snapshot (unknown format)")
    try:
        doc = orjson.loads(zlib.decompress(data[len(MAGIC):]))
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"snapshot is corrupt ({exc})") from None
    if doc.get("version") not in READABLE_VERSIONS:
        raise SnapshotError(
            f"snapshot format version {doc.get('version')} is not {FORMAT_VERSION}; "
            "start from a fresh state topic or run the version that wrote it"
        )
    if doc["model"] != config.model:
        raise SnapshotError(f"snapshot was written by model {doc['model']!r}, "
                            f"setting model is {config.model!r}")
    if doc["bucket_ms"] != config.bucket_ms:
        raise SnapshotError(f"snapshot has {doc['bucket_ms'] // 1000}s buckets, setting bucket "
                            f"is {config.bucket_ms // 1000}s")
    d = PartitionDetector(config)
    d.clock.load_state(doc["clock"], wall_ms)
    d.next_close_ms = doc["next_close_ms"]
    if doc["version"] == 3:
        for hour, pairs in doc["reporters"]:
            for service, reporter in pairs:
                d.reporters.first_report(hour * HOUR_MS, service, reporter)
    else:
        d.reporters.load_state(
            [[hour, base64.b64decode(packed)] for hour, packed in doc["reporters"]]
        )
    d.index.load(doc["series"])
    if doc["version"] <= 5:
        _before_slot_priors(doc["models"], d.bank)
    try:
        d.bank.load_state(doc["models"])
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"snapshot's model state does not fit: {exc}") from None
    # After the models: a service first counted in an open bucket (a snapshot
    # written before series got their rows at their first report) gets its row now.
    d.counter.load_state(doc["open"])
    d.incidents.load_state(doc)
    if doc["version"] >= 5:
        d.evidence.load_state(doc["evidence"])
        d.shape.load_state(doc["shape"])
    else:
        d.evidence.ensure(len(d.bank))
        d.evidence.first_ms[:] = (d.next_close_ms or 0) - d.evidence.warmup_ms
    return d
