"""The plain-HTTP TUF server against whoever reaches it: a request not sent in full is dropped,
and connections beyond its cap are closed unserved, so half-sent requests tie up neither threads
nor the port. Real sockets against the real server.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

from parley_patch_registry.tuf_http import RepositoryHttpServer
from parley_testing.waiting import wait_until

CLIENT_WAIT_S = 30.0  # far longer than the server is told to wait: a close is the server's doing


def half_sent(http: RepositoryHttpServer) -> socket.socket:
    host, port = http.base_url.removeprefix("http://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=CLIENT_WAIT_S)
    conn.sendall(b"GET /metadata/1.root.json HTTP/1.1\r\nHost: x\r\n")  # never the blank line
    return conn


def closed_by_server(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        conn.close()


def repository(tmp_path: Path) -> Path:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "1.root.json").write_text('{"signed": {}}')
    return tmp_path


def fetch(http: RepositoryHttpServer) -> bytes:
    with urllib.request.urlopen(f"{http.metadata_url}1.root.json", timeout=CLIENT_WAIT_S) as answer:
        return bytes(answer.read())


def test_a_half_sent_request_is_closed_once_its_time_is_up(tmp_path: Path) -> None:
    with RepositoryHttpServer(repository(tmp_path), request_timeout_s=0.2) as http:
        assert closed_by_server(half_sent(http))
        assert fetch(http) == b'{"signed": {}}'


def test_a_request_trickled_in_a_header_line_at_a_time_is_closed_once_its_time_is_up(tmp_path: Path) -> None:
    """Each line comes well within the time a read may wait; the request as a whole does not."""
    with RepositoryHttpServer(repository(tmp_path), request_timeout_s=1.0) as http:
        conn = half_sent(http)
        conn.settimeout(0.3)  # a line every 0.3 s, for up to 30 s
        for line in range(100):
            try:
                if conn.recv(1) == b"":
                    break  # closed by the server
            except TimeoutError:
                conn.sendall(b"X-Line-%d: 1\r\n" % line)
            except ConnectionResetError:
                break
        else:
            raise AssertionError("the server kept a request trickling in for 30 s")
        conn.close()
        assert fetch(http) == b'{"signed": {}}'


def test_connections_beyond_the_cap_are_closed_unserved_and_hold_no_thread(tmp_path: Path) -> None:
    with RepositoryHttpServer(repository(tmp_path), request_timeout_s=60.0, max_connections=4) as http:
        before = threading.active_count()
        held = [half_sent(http) for _ in range(4)]
        wait_until(lambda: threading.active_count() == before + 4, timeout=CLIENT_WAIT_S, what="4 served")

        flood = [half_sent(http) for _ in range(40)]
        assert all(closed_by_server(conn) for conn in flood)
        assert threading.active_count() == before + 4

        for conn in held:  # their requests end: the slots are free again
            conn.close()
        wait_until(lambda: threading.active_count() == before, timeout=CLIENT_WAIT_S, what="the slots freed")
        assert fetch(http) == b'{"signed": {}}'
