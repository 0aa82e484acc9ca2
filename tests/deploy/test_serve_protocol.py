"""What the server answers below HTTP: bytes that are not a request, and clients that never finish their
headers (a slowloris). uvicorn alone answers the first in plain text and waits for the second for ever."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.deploy.serving import exchange, parse_reply, serve_process

pytestmark = pytest.mark.xdist_group("serve_protocol")  # its module fixtures are built once, on one worker

HEADER_SECONDS = 1.5


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "log.txt"
    with serve_process(tiny_run.run.path, "--timeout-ms", str(HEADER_SECONDS * 1000), log=log) as process:
        yield process


TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n"  # https to an http port


@pytest.mark.parametrize("garbage", [TLS_HELLO, b"GET / HTTP/9.9 what\r\n\r\n",
                                     b"POST /v1/predict HTTP/1.1\r\nbad header\r\n\r\n"])
def test_bytes_that_are_not_http_get_a_json_400(server, garbage):
    status, headers, body = parse_reply(exchange(server.url, garbage)[0])
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["status"] == 400 and "not an HTTP/1.1 request" in body["error"]


@pytest.mark.parametrize("sent", [b"", b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "half-headers"])
def test_headers_that_do_not_arrive_in_time_get_a_json_408_and_the_connection_closes(server, sent):
    reply, seconds = exchange(server.url, sent)
    status, headers, body = parse_reply(reply)
    assert status == 408 and headers["connection"] == "close"
    assert "did not arrive within 1.5 s" in body["error"]
    assert HEADER_SECONDS - 0.2 < seconds < HEADER_SECONDS + 10
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_a_kept_alive_connection_gets_the_deadline_for_each_request(server):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reply, seconds = exchange(server.url, request + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    first, _, rest = reply.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in rest
    assert seconds > HEADER_SECONDS - 0.2


def test_a_slow_but_complete_request_is_answered(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            connection.sendall(piece)
            time.sleep(HEADER_SECONDS / 4)
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")
