"""The board's routes, answered from a view: no broker, no socket.

The feed is an in-memory stand-in with the two things the server asks of it.
"""

from __future__ import annotations

import base64
import hashlib
import re

import orjson

from stream_detector.core.board_view import BoardView
from stream_detector.io.board import BoardServer
from tests.unit.test_board_view import alert


class Feed:
    def __init__(self, view: BoardView) -> None:
        self.view = view
        self.connected = True
        self.up_to_date = True

    def caught_up(self) -> bool:
        return self.up_to_date


def serving() -> tuple[BoardView, Feed, BoardServer]:
    view = BoardView()
    feed = Feed(view)
    return view, feed, BoardServer(feed, "http://grafana:3000/")


def test_the_page_allows_only_its_own_script_and_style():
    _, _, server = serving()
    status, ctype, body, headers = server.answer(b"/")
    assert status == 200 and ctype.startswith("text/html")
    policy = re.search(rb"Content-Security-Policy: ([^\r]*)\r\n", headers).group(1).decode()
    assert "unsafe-inline" not in policy and "default-src 'none'" in policy
    for tag in ("script", "style"):
        inline = re.search(rf"<{tag}>(.*?)</{tag}>".encode(), body, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(inline).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    # Nothing is loaded from elsewhere.
    assert not re.search(rb"""(src|href)=["']?(https?:)?//""", body)


def test_bad_requests_get_a_json_error():
    _, _, server = serving()
    for target, status in ((b"/api/v1/incidents?status=later", 400), (b"/\xff", 400),
                           (b"/api/v1/services/nobody", 404), (b"/api/v2/incidents", 404)):
        answer = server.answer(target)
        assert answer[0] == status and "error" in orjson.loads(answer[2])


def test_a_cached_answer_is_replaced_once_the_view_changes():
    view, _, server = serving()
    assert orjson.loads(server.answer(b"/api/v1/incidents")[2]) == {"incidents": []}
    view.apply_alert(orjson.dumps(alert("x", 0, 0)))
    assert orjson.loads(server.answer(b"/api/v1/incidents?junk=1")[2]) == {
        "incidents": [alert("x", 0, 0)]}
    detail = orjson.loads(server.answer(b"/api/v1/services/x")[2])
    assert detail["grafana"] == "http://grafana:3000/d/stream-detector?var-service=x"


def test_probes_follow_the_feed():
    _, feed, server = serving()
    assert [server.answer(p)[0] for p in (b"/healthz", b"/readyz")] == [200, 200]
    feed.up_to_date = False
    assert [server.answer(p)[0] for p in (b"/healthz", b"/readyz")] == [200, 503]
    assert orjson.loads(server.answer(b"/api/v1/board")[2])["caught_up"] is False
    feed.connected = False
    assert [server.answer(p)[0] for p in (b"/healthz", b"/readyz")] == [503, 503]


def test_a_service_named_dot_dot_is_asked_for_by_query():
    view, _, server = serving()
    view.apply_alert(orjson.dumps(alert("..", 0, 0)))
    status, _, body, _ = server.answer(b"/api/v1/services?service=..")
    assert status == 200
    assert orjson.loads(body)["service"] == ".."
    assert server.answer(b"/api/v1/services?service=other")[0] == 404
    for unnamed in (b"/api/v1/services", b"/api/v1/services?service=", b"/api/v1/services/"):
        status, _, body, _ = server.answer(unnamed)
        assert status == 400 and b"name a service" in body, unnamed
