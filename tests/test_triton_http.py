"""The gateway's HTTP transport to Triton (service/triton_http.py) against real sockets.

A small asyncio HTTP server on a free loopback port stands in for Triton here (its protocol
work is tritonclient's, checked against the real server in test_service_triton.py); each test
server misbehaves in one way: it closes idle connections, never answers, or answers garbage.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time

import pytest

from adaudit.service.addresses import parse_targets
from adaudit.service.triton_http import HttpTransport, TritonHttpClient, TritonHttpError
from adaudit.service.triton_transport import TritonCallError


class Server:
    """Answers `POST /echo` with the sha256 of the body and the request path, on keep-alive connections."""

    def __init__(self, mode: str = "normal"):
        self.mode, self.connections, self.requests, self.server = mode, 0, 0, None

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
                self.requests += 1
                if self.mode == "drop":  # a server that goes away mid-call (its pod deleted)
                    break
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


# --- several addresses: round robin, lookups again, failover (service/addresses.py) -----------------------------

class Names:
    """A stand-in for DNS: `answers[name]` is the address list a lookup returns, or a socket.gaierror to raise."""

    def __init__(self, **answers):
        self.answers, self.lookups = answers, 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


def test_calls_go_round_robin_over_the_addresses_of_a_list():
    """`a:1,b:2`: sequential calls alternate, concurrent ones split evenly, each address on its own pool."""
    async def go():
        async with Server() as one, Server() as two:
            transport = HttpTransport(f"{one.url}, {two.url}")
            for i in range(10):
                assert (await transport._request(f"/echo/{i}")).status == 200
            sequential = (one.requests, two.requests)
            await asyncio.gather(*(transport._request("/echo", str(i).encode()) for i in range(20)))
            await transport.close()
            return sequential, (one.requests, two.requests), set(transport.pools)
    sequential, concurrent, pools = run(go())
    assert sequential == (5, 5) and concurrent == (15, 15) and pools == set()  # closed: no pool left


def test_an_address_a_new_lookup_adds_gets_calls_and_one_it_drops_loses_its_pool():
    async def go():
        async with Server() as one, Server() as two:
            names = Names(triton=[one.url])
            transport = HttpTransport("triton:8000", resolve_interval_s=0.2, lookup=names)
            for _ in range(4):
                await transport._request("/echo")
            assert (one.requests, two.requests) == (4, 0)
            names.answers["triton"] = [one.url, two.url]  # a pod added: the next lookup sees it
            await asyncio.sleep(0.25)
            await transport._request("/echo")  # starts the lookup in the background (no call waits for DNS)
            await asyncio.sleep(0.05)
            for _ in range(10):
                await transport._request("/echo")
            added = (one.requests, two.requests)
            names.answers["triton"] = [two.url]  # the first pod is gone from DNS
            await asyncio.sleep(0.25)
            await transport._request("/echo")
            await asyncio.sleep(0.05)
            assert set(transport.pools) == {two.url}
            before = one.requests
            for _ in range(4):
                await transport._request("/echo")
            await transport.close()
            return added, one.requests - before
    (first, second), later = run(go())
    assert (first, second) == (10, 5) and later == 0


def test_a_call_whose_server_goes_away_fails_over_within_its_timeout():
    """The server closes the connection without answering (its pod deleted mid-call), or nothing listens: the
    call is answered by the next address, and the failed one rests until the next lookup interval."""
    async def go():
        async with Server("drop") as gone, Server() as alive:
            async with Server() as closed:
                nothing = closed.url
            transport = HttpTransport(f"{gone.url},{nothing},{alive.url}", resolve_interval_s=30)
            answers = [await transport._request(f"/echo/{i}") for i in range(6)]
            await transport.close()
            return answers, gone.requests, alive.requests
    answers, dropped, served = run(go())
    assert [a.status for a in answers] == [200] * 6 and served == 6
    assert dropped == 1  # tried once, then skipped while it rests


def test_when_no_address_answers_the_error_names_every_one_at_once():
    async def go():
        async with Server("drop") as one:
            async with Server() as closed:
                nothing = closed.url
            transport = HttpTransport(f"{one.url},{nothing}", timeout_s=5)
            started = time.monotonic()
            with pytest.raises(TritonCallError) as caught:
                await transport._request("/echo")
            await transport.close()
            return caught.value, time.monotonic() - started, one.url, nothing
    error, waited, one, nothing = run(go())
    assert error.down and not error.answered and waited < 1
    assert f"cannot connect to {nothing}" in error.detail and "closed the connection" in error.detail


def test_a_name_that_resolves_to_nothing_is_a_fast_503_naming_the_host():
    """The system resolver, for a name that cannot exist (RFC 6761 `.invalid`): the gateway's 503
    backend_unavailable at once, naming the host, over either protocol (gRPC opens no channel for it)."""
    from adaudit.service.backends import BackendError, TritonBackend
    from adaudit.service.triton_grpc import GrpcTransport

    async def go(transport):
        backend = TritonBackend(transport)
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            await backend.describe("student")
        waited = time.monotonic() - started
        again = time.monotonic()
        with pytest.raises(BackendError):  # known to be empty: refused without another lookup
            await backend.describe("student")
        again = time.monotonic() - again
        with pytest.raises(BackendError, match="resolves to no address"):
            await backend.infer("student", "1", {})
        assert not await backend.ready("student")
        await backend.close()
        return caught.value, waited, again

    for transport in (HttpTransport("no-such-triton.invalid:8000"), GrpcTransport("no-such-triton.invalid:8001")):
        error, waited, again = run(go(transport))
        assert error.kind == "backend_unavailable" and "Triton host no-such-triton.invalid resolves to no address" \
            in error.message, error.message
        assert waited < 3 and again < 0.1


def test_a_name_that_disappears_empties_the_list_and_a_temporary_dns_failure_keeps_it():
    async def go():
        async with Server() as one:
            names = Names(triton=[one.url])
            transport = HttpTransport("triton:8000", resolve_interval_s=0.1, lookup=names)
            await transport._request("/echo")
            names.answers["triton"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            await asyncio.sleep(0.15)
            await transport._request("/echo")  # the background lookup fails for now: the last list stays
            await asyncio.sleep(0.05)
            await transport._request("/echo")
            names.answers["triton"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            await asyncio.sleep(0.15)
            await transport._request("/echo")
            await asyncio.sleep(0.05)
            with pytest.raises(TritonCallError, match="Triton host triton resolves to no address.*not known"):
                await transport._request("/echo")
            assert transport.pools == {}  # its pool went with it
            names.answers["triton"] = [one.url]  # back (a pod ready again): found by the next lookup
            await asyncio.sleep(0.15)
            with pytest.raises(TritonCallError):
                await transport._request("/echo")  # this call starts the lookup
            await asyncio.sleep(0.05)
            assert (await transport._request("/echo")).status == 200
            await transport.close()
            return one.requests
    assert run(go()) == 5


def test_a_connection_older_than_the_maximum_age_is_not_reused():
    async def go():
        async with Server() as server:
            client = TritonHttpClient(server.url, max_age_s=0.2)
            for _ in range(3):
                await client.request("GET", "/echo")
            young = server.connections
            await asyncio.sleep(0.25)
            await client.request("GET", "/echo")
            await client.close()
            return young, server.connections
    assert run(go()) == (1, 2)


@pytest.mark.parametrize("url, problem", [("a:1,b", "'b' must be host:port"), ("a:1,", "'' must be host:port"),
                                          ("a:70000", "'a:70000' must be host:port")])
def test_an_address_list_with_a_bad_entry_is_refused_naming_it(url, problem):
    with pytest.raises(ValueError, match=problem):
        parse_targets(url)
    assert parse_targets("[::1]:8000, triton:8001") == [("::1", 8000), ("triton", 8001)]
