"""The forwarder's buffer: bounded, and never losing a resolve to make room."""

from stream_detector.io.alertmanager import AlertmanagerClient, AlertmanagerForwarder


def alert(n: int, status: str) -> dict:
    return {"alert_id": f"svc/*/{n}", "status": status}


def test_full_buffer_drops_the_oldest_firing_update_and_keeps_resolves():
    forwarder = AlertmanagerForwarder(AlertmanagerClient("http://127.0.0.1:9"), max_pending=3)
    forwarder.offer(alert(1, "resolved"))
    forwarder.offer(alert(2, "firing"))
    forwarder.offer(alert(3, "firing"))
    forwarder.offer(alert(4, "resolved"))
    assert [a["alert_id"] for a in forwarder.pending] == ["svc/*/1", "svc/*/3", "svc/*/4"]
    assert forwarder.wakeup.is_set()
