"""Kafka clients built from the settings, and what a failed connection means.

Every aiokafka client of the service (reports consumer, producer, snapshot
store, admin) gets its connection options here, so security settings apply
to all of them alike, and a failure to connect ends in one sentence naming
the setting to look at: bootstrap_servers when nothing answers, the TLS
settings when the broker answers but TLS fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream_detector.config import Settings, format_duration

log = logging.getLogger(__name__)

# How the reports consumer fetches. Large fetches, for throughput. A short
# long-poll because aiokafka keeps one fetch in flight per broker: when some
# partitions are at the end of their log and another still has a backlog, a
# fetch for the caught-up ones waits out the whole long-poll (500 ms by
# default) while the busy partition's data sits on the broker. Measured on
# bench/throughput.py, whose partitions fill unevenly: 9 stalls of 200 ms in
# one run of a million reports. Idle, it costs 10 empty fetches a second.
CONSUMER_FETCH = {"max_partition_fetch_bytes": 4 * 1024 * 1024, "fetch_max_wait_ms": 100}


class BrokerUnreachable(RuntimeError):
    """No connection to the brokers; the message is one sentence naming the setting to check."""


def build_producer(settings: Settings) -> AIOKafkaProducer:
    # The idempotent producer is not required: alerts carry a stable alert_id,
    # and not every Kafka-compatible broker supports it.
    return AIOKafkaProducer(
        **settings.kafka_client_options(),
        enable_idempotence=False,
        acks="all",
        linger_ms=5,
        request_timeout_ms=30_000,
    )


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The reports consumer: in the group, committing by hand after each checkpoint."""
    return AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=settings.group_id,
        enable_auto_commit=False,
        # No silent reset: a position outside the log raises, and the loop
        # restarts that partition from the earliest offset, loudly
        # (OwnedPartitions.reset); a partition with no committed
        # offset is sought to its beginning on assign.
        auto_offset_reset="none",
        **CONSUMER_FETCH,
    )


# The first wait between start-up tries, doubled after each up to the cap.
STARTUP_RETRY_FIRST_S = 1.0
STARTUP_RETRY_MAX_S = 10.0


async def start_client(client: AIOKafkaConsumer | AIOKafkaProducer, settings: Settings) -> None:
    """Start `client`, trying again for up to `startup_timeout` while nothing answers.

    A broker started beside the detector (compose, a pod restart) is often
    not listening yet. Each failed try is logged with the wait before the next;
    a TLS mismatch is a setting to fix, not a broker to wait for, so it ends at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.startup_timeout
    wait = STARTUP_RETRY_FIRST_S
    tries = 0
    while True:
        tries += 1
        try:
            await client.start()
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            # aiokafka logs why each bootstrap server failed and raises a bare
            # "Unable to bootstrap", with no __cause__: the SSL error is gone. So
            # on failure, and only then, one probe of the first server says
            # whether TLS is what went wrong.
            sentence = await diagnose_connection(settings)
            left = deadline - loop.time()
            if sentence is not None or left <= 0:
                waited = (f" (tried {tries} times over {format_duration(settings.startup_timeout)}"
                          "; setting startup_timeout)") if tries > 1 else ""
                raise BrokerUnreachable(sentence or (
                    f"cannot reach the Kafka broker at bootstrap_servers="
                    f"{settings.bootstrap_servers} ({type(exc).__name__}){waited}; check the "
                    "bootstrap_servers setting and that the broker is running"
                )) from None
            pause = min(wait, left)
            log.warning("Kafka broker not reachable at start-up; trying again",
                        extra={"bootstrap_servers": settings.bootstrap_servers, "try": tries,
                               "retry_in_s": round(pause, 1), "gives_up_in_s": round(left, 1)})
            await asyncio.sleep(pause)
            wait = min(2 * wait, STARTUP_RETRY_MAX_S)


# -- what a failed connection means ------------------------------------------
#
# How each mistake looks from aiokafka 0.14 (tests/integration/test_tls.py
# makes every one of them against a TLS proxy in front of tansu):
#   wrong or missing ssl_cafile   SSLCertVerificationError in the handshake
#   client certificate refused    (TLS 1.3) a clean handshake, then the broker's
#                                 alert, or a close, on the first read
#   SSL to a plaintext port       a handshake never answered (tansu waits for
#                                 the rest of a "request" of 0x16030... bytes)
#                                 or a connection closed mid-handshake (Kafka)
#   PLAINTEXT to a TLS port       the connection closed with no answer
# aiokafka reports them all as "Unable to bootstrap".

PROBE_TIMEOUT = 5.0
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
# ApiVersions v0, correlation id 1, client id "probe": the request any Kafka
# broker answers before authentication.
_API_VERSIONS = struct.pack(">ihhih5s", 2 + 2 + 4 + 2 + 5, 18, 0, 1, 5, b"probe")
# A TLS record (handshake 0x16 or alert 0x15) begins with its type then 0x03.
_TLS_RECORD_TYPES = (0x15, 0x16)


def first_bootstrap_server(bootstrap_servers: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`, or a host alone: 9092) of the first entry."""
    entry = bootstrap_servers.split(",")[0].strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.lstrip(":")
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, ""
    return host, int(port) if port.isdigit() else 9092


async def diagnose_connection(settings: Settings, timeout: float = PROBE_TIMEOUT) -> str | None:
    """One sentence for a TLS mismatch with the first bootstrap server, or None.

    None when the server cannot be reached at all, or answers a Kafka request
    over the configured protocol: then the problem is not TLS.
    """
    host, port = first_bootstrap_server(settings.bootstrap_servers)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        if settings.security_protocol in TLS_PROTOCOLS:
            return await _probe_tls(settings, host, port, reader, writer, timeout)
        return await _probe_plaintext(settings, f"{host}:{port}", reader, writer, timeout)
    finally:
        writer.transport.abort()


async def _probe_tls(
    settings: Settings, host: str, port: int,
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float,
) -> str | None:
    at = f"TLS to the Kafka broker at {host}:{port} failed"
    protocol = settings.security_protocol
    plaintext_port = (
        f"; check security_protocol: {protocol} needs a TLS listener, and this port looks "
        f"like a plaintext one (for which it is {protocol.replace('SSL', 'PLAINTEXT')})"
    )
    context = settings.kafka_client_options()["ssl_context"]
    try:
        # asyncio's own handshake timeout aborts with a ConnectionAbortedError,
        # which would read as a closed connection: time it out here instead.
        await asyncio.wait_for(writer.start_tls(
            context, server_hostname=host, ssl_handshake_timeout=2 * timeout), timeout)
    except ssl.SSLCertVerificationError as exc:
        return at + ": " + _untrusted(settings, host, exc)
    except TimeoutError:
        return f"{at}: no answer to the TLS handshake within {timeout:g}s{plaintext_port}"
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLEOFError):
        return f"{at}: the connection closed during the TLS handshake{plaintext_port}"
    except ssl.SSLError as exc:
        if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                          "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"):
            return f"{at}: the broker did not answer in TLS ({exc.reason}){plaintext_port}"
        if _refuses_client_certificate(exc):
            return at + ": " + _client_refused(settings, exc.reason)
        return (f"{at}: the TLS handshake failed ({exc.reason or exc}); check security_protocol, "
                "ssl_cafile, ssl_certfile and ssl_keyfile")
    # The handshake is done, as far as this side knows. With TLS 1.3 a broker
    # that refuses the client certificate says so only now, on the first read.
    try:
        writer.write(_API_VERSIONS)
        await asyncio.wait_for(reader.readexactly(4), timeout)
    except ssl.SSLError as exc:
        if _refuses_client_certificate(exc):
            return at + ": " + _client_refused(settings, exc.reason)
        return (f"{at}: the connection failed after the TLS handshake ({exc.reason or exc}); "
                "check ssl_certfile and ssl_keyfile")
    except (ConnectionError, asyncio.IncompleteReadError):
        return at + ": " + _client_refused(settings, None)
    except TimeoutError:
        return None
    return None


# X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH
_NAME_MISMATCH = (62, 63, 64)


def _untrusted(settings: Settings, host: str, exc: ssl.SSLCertVerificationError) -> str:
    reason = (exc.verify_message or exc.reason or str(exc)).rstrip(".")
    if exc.verify_code in _NAME_MISMATCH:
        return (f"the broker's certificate is not valid for {host} ({reason}); name the broker "
                "in bootstrap_servers as its certificate does")
    if settings.ssl_cafile:
        return (f"the broker's certificate is not trusted ({reason}); check ssl_cafile="
                f"{settings.ssl_cafile}: it must hold the CA that signed the broker's certificate")
    return (f"the broker's certificate is not trusted by the system's CAs ({reason}); set "
            "ssl_cafile to the CA that signed the broker's certificate")


def _refuses_client_certificate(exc: ssl.SSLError) -> bool:
    reason = exc.reason or ""
    return any(word in reason for word in ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE"))


def _client_refused(settings: Settings, reason: str | None) -> str:
    why = f" ({reason})" if reason else ""
    if not settings.ssl_certfile:
        return (f"the broker requires a client certificate{why}, and none is set; set "
                "ssl_certfile and ssl_keyfile")
    return (f"the broker refused the client certificate{why}; check ssl_certfile="
            f"{settings.ssl_certfile} and ssl_keyfile: the certificate must be signed by a CA "
            "the broker trusts")


async def _probe_plaintext(
    settings: Settings, address: str,
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float,
) -> str | None:
    tls = "SASL_SSL" if settings.security_protocol.startswith("SASL") else "SSL"
    head = b""
    try:
        writer.write(_API_VERSIONS)
        head = await asyncio.wait_for(reader.readexactly(2), timeout)
    except asyncio.IncompleteReadError as exc:
        head = exc.partial
    except ConnectionError:
        pass
    except (OSError, TimeoutError):
        return None
    if not head:
        return (f"the Kafka broker at {address} closed the connection without answering a "
                f"plaintext request, as a TLS listener does; check security_protocol: if "
                f"the broker uses TLS, set it to {tls} with ssl_cafile")
    if head[0] in _TLS_RECORD_TYPES and head[1:2] == b"\x03":
        return (f"the Kafka broker at {address} answered in TLS; check security_protocol: "
                f"set it to {tls} with ssl_cafile")
    return None


BROKER_CHECK_EVERY_S = 5.0


async def watch_broker(
    consumer: AIOKafkaConsumer, stop: asyncio.Event, on_change: Callable[[bool], None]
) -> None:
    """Ask the broker for metadata every few seconds until `stop`; `on_change` hears
    whether it answered each time the answer differs from the one before (the first
    answer too), and a warning is logged at each change after the first."""
    connected: bool | None = None
    while not stop.is_set():
        try:
            await asyncio.wait_for(consumer.topics(), BROKER_CHECK_EVERY_S)
            now = True
        except (TimeoutError, KafkaError, OSError):
            now = False
        if now != connected:
            if connected is not None:
                log.warning("broker %s", "reachable again" if now else "unreachable")
            connected = now
            on_change(now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), BROKER_CHECK_EVERY_S)


async def stop_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop `client`, with a warning instead of an error when it cannot close cleanly.

    aiokafka lets its fetcher's cancellation escape `stop()` while the broker is
    unreachable; nothing is left to do by then. A cancellation of the caller
    itself still propagates.
    """
    try:
        await client.stop()
    except (asyncio.CancelledError, KafkaError) as exc:
        if (task := asyncio.current_task()) is not None and task.cancelling():
            raise
        log.warning("a Kafka client did not close cleanly", extra={"error": repr(exc)})
