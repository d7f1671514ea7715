"""security_protocol = SSL for real: a TLS-terminating proxy on loopback in front of tansu.

tansu cannot listen with TLS, so the test puts an asyncio TLS server (requiring
client certificates from the test's own CA) in front of a second embedded
broker, which advertises the proxy's port in its metadata: clients bootstrap
through the proxy and the metadata sends them back to it, never to the
plaintext port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import random
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stream_detector.backtest import replay_events
from stream_detector.config import Settings, load_settings
from stream_detector.embedded import EmbeddedBroker, free_port
from stream_detector.io.clients import build_producer, diagnose_connection, start_client
from tests.conftest import wait_for
from tests.integration.kafka_helpers import (
    detector_settings,
    encode,
    running_detector,
    scrape,
    traffic,
)
from tests.integration.test_cli import one_sentence_error, stream_detector

pytestmark = pytest.mark.integration

# -- certificates ----------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    """A certificate and its key, written to files."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key) -> Pem:
    pem = Pem(directory / f"{stem}.pem", directory / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return pem


class Authority:
    """A certificate authority made for one test session, and what it signs."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(directory, name, self.cert, self.key)

    def issue(self, stem: str, common_name: str, *, server: bool) -> Pem:
        """A leaf certificate: for 127.0.0.1 and localhost if `server`, else a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
            ]), critical=False)
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)


# -- the proxy ---------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


class TlsProxy:
    """TLS on a loopback port (client certificates required), plaintext to `upstream_port`.

    It runs on an event loop of its own in a thread, so it serves the detector
    alike whether that runs in the test's loop or as a `stream-detector` process.
    """

    def __init__(self, context: ssl.SSLContext, upstream_port: int):
        self.context = context
        self.upstream_port = upstream_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10,
        ), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, broker_w}
        try:
            await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))
        finally:
            self._writers -= {client_w, broker_w}

    async def _close(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def server_context(server: Pem, client_ca: Path) -> ssl.SSLContext:
    """The proxy's side: its certificate, and client certificates required from `client_ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.load_cert_chain(server.cert, server.key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class PlaintextCloser:
    """A plaintext port that drops a connection at its first bytes, as Kafka does with a
    TLS ClientHello (read as a request size of 0x16030... bytes, over the limit)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.sock.accept()
                with connection:
                    connection.recv(1)

    def __enter__(self) -> PlaintextCloser:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(), which close() would not
        self.sock.close()
        self._thread.join(5)


# -- fixtures ----------------------------------------------------------------


@dataclass(frozen=True)
class TlsCluster:
    proxy: TlsProxy
    broker: EmbeddedBroker
    ca: Authority
    other_ca: Authority
    client: Pem
    stranger: Pem
    """A client certificate signed by `other_ca`, which the proxy does not trust."""
    closer: PlaintextCloser

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def plaintext(self) -> str:
        """The broker's own plaintext port, behind the proxy."""
        return self.broker.bootstrap_servers

    def ssl_flags(self) -> dict[str, str]:
        return {"security_protocol": "SSL", "ssl_cafile": str(self.ca.pem.cert),
                "ssl_certfile": str(self.client.cert), "ssl_keyfile": str(self.client.key)}


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca, other_ca = Authority(directory, "ca"), Authority(directory, "other-ca")
    server = ca.issue("server", "127.0.0.1", server=True)
    client = ca.issue("client", "stream-detector", server=False)
    stranger = other_ca.issue("stranger", "stream-detector", server=False)
    broker_port = free_port()
    proxy = TlsProxy(server_context(server, ca.pem.cert), broker_port).start()
    try:
        with EmbeddedBroker(broker_port, advertised_port=proxy.port) as broker, \
                PlaintextCloser() as closer:
            yield TlsCluster(proxy, broker, ca, other_ca, client, stranger, closer)
    finally:
        proxy.stop()


# -- the detector over TLS ---------------------------------------------------


async def produce_tls(settings: Settings, reports: list[dict]) -> None:
    """`reports` to the reports topic, by a producer built as the detector builds its own."""
    values, keys = encode(reports)
    producer = build_producer(settings)
    await start_client(producer, settings)
    try:
        sent = [await producer.send(settings.reports_topic, value, key=key)
                for key, value in zip(keys, values, strict=True)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def alerts_until(settings: Settings, until) -> list:
    """The alerts topic from its start, over TLS, until `until(messages)` holds."""
    consumer = AIOKafkaConsumer(settings.alerts_topic, **settings.kafka_client_options(),
                                auto_offset_reset="earliest")
    await start_client(consumer, settings)
    seen: list = []

    async def enough() -> bool:
        fetched = await consumer.getmany(timeout_ms=200)
        seen.extend(m for batch in fetched.values() for m in batch)
        return until(seen)

    try:
        await wait_for(enough, 60)
    finally:
        await consumer.stop()
    return seen


async def test_advertised_address_is_the_proxy(tls):
    """The premise of the other tests: no client is sent past the proxy to plaintext."""
    settings = load_settings({"bootstrap_servers": tls.bootstrap, **tls.ssl_flags()}, environ={})
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", tls.proxy.port)]


async def test_detector_runs_end_to_end_over_tls(tls, unique):
    settings = detector_settings(tls.bootstrap, unique, model="ewma", idle_timeout="2s",
                                 checkpoint_interval="1s", **tls.ssl_flags())
    reports = traffic(random.Random(7), minutes=130, outage=range(100, 115))
    async with running_detector(settings) as port:
        await produce_tls(settings, reports)

        def resolved(messages):
            return any(orjson.loads(m.value)["status"] == "resolved" for m in messages)

        messages = await alerts_until(settings, resolved)

        async def all_counted():
            metrics = await scrape(port)
            return metrics.get(("stream_detector_reports_total", (("outcome", "accepted"),))) \
                == len(reports)

        await wait_for(all_counted)
    alerts = [orjson.loads(m.value) for m in messages]
    offline = replay_events((orjson.dumps(r) for r in reports), settings.detector_config())
    assert [m.value for m in messages] == [a.to_json() for bucket in offline
                                           for a in bucket.alerts]
    assert alerts[0]["status"] == "firing" and alerts[-1]["status"] == "resolved"


async def test_probe_finds_nothing_wrong_with_a_sound_connection(tls):
    sound = [load_settings({"bootstrap_servers": tls.bootstrap, **tls.ssl_flags()}, environ={}),
             load_settings({"bootstrap_servers": tls.plaintext}, environ={})]
    assert [await diagnose_connection(s) for s in sound] == [None, None]


# -- TLS failures, as the command line reports them --------------------------


def _misconfigured(tls: TlsCluster, case: str) -> list[str]:
    """`stream-detector run` arguments for one way of getting TLS wrong."""
    good = tls.ssl_flags()
    bootstrap, flags = {
        "wrong_ca": (tls.bootstrap, {**good, "ssl_cafile": str(tls.other_ca.pem.cert)}),
        "no_client_certificate": (tls.bootstrap, {"security_protocol": "SSL",
                                                  "ssl_cafile": good["ssl_cafile"]}),
        "untrusted_client_certificate": (tls.bootstrap, {
            **good, "ssl_certfile": str(tls.stranger.cert), "ssl_keyfile": str(tls.stranger.key)
        }),
        "ssl_to_plaintext_tansu": (tls.plaintext, good),
        "ssl_to_plaintext_closing": (f"127.0.0.1:{tls.closer.port}", good),
        "plaintext_to_tls": (tls.bootstrap, {"security_protocol": "PLAINTEXT"}),
    }[case]
    args = ["run", "--bootstrap-servers", bootstrap, "--metrics-port", "0"]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", value]
    return args


@pytest.mark.parametrize("case, named", [
    ("wrong_ca", ["ssl_cafile"]),
    ("no_client_certificate", ["ssl_certfile", "ssl_keyfile"]),
    ("untrusted_client_certificate", ["ssl_certfile", "ssl_keyfile"]),
    # tansu waits for the rest of the "request" a ClientHello looks like; Kafka drops it.
    ("ssl_to_plaintext_tansu", ["security_protocol", "TLS"]),
    ("ssl_to_plaintext_closing", ["security_protocol", "TLS"]),
    ("plaintext_to_tls", ["security_protocol", "TLS"]),
])
def test_tls_failure_names_the_tls_settings(tls, case, named):
    line = one_sentence_error(stream_detector(*_misconfigured(tls, case)), timeout=90)
    assert all(name in line for name in named), line
    assert "bootstrap_servers" not in line, line
