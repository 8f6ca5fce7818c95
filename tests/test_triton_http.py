"""The gateway's HTTP transport to Triton (service/triton_http.py) against real sockets.

A small asyncio HTTP server on a free loopback port stands in for Triton here (its protocol
work is tritonclient's, checked against the real server in test_service_triton.py); each test
server misbehaves in one way: it closes idle connections, never answers, or answers garbage.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from adaudit.service.triton_http import TritonHttpClient, TritonHttpError


class Server:
    """Answers `POST /echo` with the sha256 of the body and the request path, on keep-alive connections."""

    def __init__(self, mode: str = "normal"):
        self.mode, self.connections, self.server = mode, 0, None

    async def __aenter__(self) -> "Server":
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if self.mode == "silent":
                    await asyncio.sleep(60)
                if self.mode == "garbage":
                    writer.write(b"\x00\x01 this is not HTTP\r\n\r\n")
                    await writer.drain()
                    continue
                answer = f"{lines[0].split()[1]} {hashlib.sha256(body).hexdigest()}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Seen: %s\r\n\r\n%s"
                             % (len(answer), headers.get("x-tag", "").encode(), answer))
                await writer.drain()
                if self.mode == "close_after_answer":  # as a server whose keep-alive ran out
                    break
                if self.mode == "unprompted":  # a stray partial answer on the now idle connection
                    await asyncio.sleep(0.02)
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Le")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(coroutine):
    return asyncio.run(coroutine)


def test_calls_reuse_one_keep_alive_connection_and_bodies_arrive_intact():
    async def go():
        async with Server() as server:
            client = TritonHttpClient(server.url)
            big = bytes(range(256)) * 1024  # 256 KiB: written in two parts
            for body in (b"", b"small", big):
                answer = await client.request("POST", "/echo", body, {"X-Tag": "t1"})
                assert answer.status == 200 and answer.headers["x-seen"] == "t1"
                assert answer.body.decode() == f"/echo {hashlib.sha256(body).hexdigest()}"
            await client.close()
            return server.connections
    assert run(go()) == 1


def test_concurrent_calls_get_their_own_connections_and_answers():
    async def go():
        async with Server() as server:
            client = TritonHttpClient(server.url)
            answers = await asyncio.gather(*(client.request("POST", f"/echo/{i}", str(i).encode()) for i in range(6)))
            for i, answer in enumerate(answers):
                assert answer.body.decode() == f"/echo/{i} {hashlib.sha256(str(i).encode()).hexdigest()}"
            connections = server.connections
            await client.request("GET", "/echo")  # an idle one is reused: no seventh connection
            await client.close()
            return connections, server.connections
    connections, after = run(go())
    assert connections == 6 and after == 6


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def go():
        async with Server("close_after_answer") as server:
            client = TritonHttpClient(server.url)
            for i in range(3):
                answer = await client.request("POST", "/echo", b"x")
                assert answer.status == 200
                await asyncio.sleep(0.05)  # the server's close reaches the client
            await client.close()
            return server.connections
    assert run(go()) == 3


def test_a_server_that_never_answers_is_an_error_after_the_timeout():
    async def go():
        async with Server("silent") as server:
            client = TritonHttpClient(server.url)
            started = time.monotonic()
            with pytest.raises(TritonHttpError, match="did not answer within 0.3 s"):
                await client.request("POST", "/echo", b"x", timeout=0.3)
            waited = time.monotonic() - started
            assert client._idle == []  # the half-used connection is dropped, never read by the next call
            return waited
    assert run(go()) < 5  # bounded by the timeout, not by the server's 60 s


def test_bytes_arriving_on_an_idle_connection_are_never_taken_for_the_next_answer():
    async def go():
        async with Server("unprompted") as server:
            client = TritonHttpClient(server.url)
            assert (await client.request("POST", "/echo/1", b"a")).status == 200
            await asyncio.sleep(0.1)  # the stray bytes arrive while the connection idles
            answer = await client.request("POST", "/echo/2", b"b")
            await client.close()
            return answer, server.connections
    answer, connections = run(go())
    assert answer.status == 200 and answer.body.decode().startswith("/echo/2 ")
    assert connections == 2  # the connection that received them was closed, not reused


def test_the_timeout_covers_connecting():
    """A listener whose accept queue is full leaves new connection attempts unanswered (as a dead node
    does): the call still ends within its timeout."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the queue; further SYNs are dropped by the kernel
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)

        async def go():
            client = TritonHttpClient(f"127.0.0.1:{port}")
            started = time.monotonic()
            with pytest.raises(TritonHttpError, match="within"):
                await client.request("GET", "/echo", timeout=0.5)
            return time.monotonic() - started
        assert run(go()) < 3
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_an_answer_that_is_not_http_is_an_error():
    async def go():
        async with Server("garbage") as server:
            client = TritonHttpClient(server.url)
            with pytest.raises(TritonHttpError, match="not HTTP"):
                await client.request("GET", "/echo", timeout=5)
    run(go())


def test_nothing_listening_is_an_error_naming_the_address():
    async def go():
        async with Server() as server:
            url = server.url
        client = TritonHttpClient(url)  # the server is gone: its port refuses
        with pytest.raises(TritonHttpError, match=f"cannot connect to {url}"):
            await client.request("GET", "/echo")
    run(go())


@pytest.mark.parametrize("url", ["localhost", "localhost:http", ":8000"])
def test_an_address_without_a_port_is_refused(url):
    with pytest.raises(ValueError, match="HOST:PORT"):
        TritonHttpClient(url)


def test_triton_errors_are_named_once_for_every_transport():
    """The transport says whether Triton answered and whether the server or the model failed; TritonBackend
    makes the gateway's error from that, the same for HTTP and gRPC. Over HTTP: a 503 is the server down, a
    400 the model refused (Triton's own message), nothing listening a server that did not answer."""
    from adaudit.service.backends import BackendError, TritonBackend
    from adaudit.service.triton_http import HttpTransport

    async def triton(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readuntil(b"\r\n\r\n")).split()[1].decode()
        status, body = (503, b"{}") if "busy" in path else (400, b'{"error": "unknown model"}')
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(triton, "127.0.0.1", 0)
        url = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        backend = TritonBackend(HttpTransport(url, timeout_s=2))
        errors = []
        for model in ("busy", "missing"):
            with pytest.raises(BackendError) as caught:
                await backend.describe(model)
            errors.append((caught.value.kind, caught.value.message))
        assert not await backend.ready("missing")
        await backend.close()
        server.close()
        await server.wait_closed()
        with pytest.raises(BackendError) as caught:  # nothing listens there any more
            await TritonBackend(HttpTransport(url, timeout_s=2)).describe("busy")
        return url, errors + [(caught.value.kind, caught.value.message)]

    url, (busy, missing, gone) = run(go())
    assert busy == ("backend_unavailable", f"Triton at {url} cannot serve model busy: {{}} (HTTP 503)")
    assert missing == ("model_not_ready", f"Triton at {url} cannot serve model missing: unknown model (HTTP 400)")
    assert gone[0] == "backend_unavailable" and "did not answer for model busy: cannot connect" in gone[1]
