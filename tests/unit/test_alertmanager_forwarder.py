"""The forwarder's buffer: bounded, and never losing a resolve to make room."""

from stream_detector.core.incidents import Change
from stream_detector.io.alertmanager import AlertmanagerClient, AlertmanagerForwarder
from tests.alerts import make_alert


def alert(n: int, change: Change):
    return make_alert(service=f"svc{n}", change=change,
                      ended_ms=0 if change is Change.RESOLVED else None)


def test_full_buffer_drops_the_oldest_firing_update_and_keeps_resolves():
    forwarder = AlertmanagerForwarder(AlertmanagerClient("http://127.0.0.1:9"), max_pending=3)
    forwarder.offer(alert(1, Change.RESOLVED))
    forwarder.offer(alert(2, Change.OPENED))
    forwarder.offer(alert(3, Change.UPDATED))
    forwarder.offer(alert(4, Change.RESOLVED))
    assert [a.service for a in forwarder.pending] == ["svc1", "svc3", "svc4"]
    assert forwarder.wakeup.is_set()
