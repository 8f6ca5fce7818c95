"""Triton's HTTP/REST inference protocol over asyncio: the HTTP transport, on keep-alive HTTP/1.1.

`HttpTransport` is the transport interface of triton_transport.py for Triton's HTTP/REST
protocol: tritonclient makes the request body (KServe v2 JSON with the binary tensor extension:
`InferenceServerClient.generate_request_body`) and reads the answer (`parse_response_body`);
`TritonHttpClient` only carries the bytes. Each connection is an `asyncio.Protocol` whose
response is parsed by httptools (the parser uvicorn uses); the client keeps the idle ones for
the next call and opens another when all are busy, so concurrent calls never queue behind each
other on one socket.

Why not tritonclient's own clients: its asyncio HTTP client runs on aiohttp, which costs about
as much per call as its asyncio gRPC client, and its plain HTTP client blocks the event loop.
This client's call costs a fraction of either on a small machine, which is why HTTP is the
default protocol (the figures: benchmarks/results/serving-history.md).
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import quote

import httptools
import numpy as np

from adaudit.models.preprocessing import SERVED_INPUTS

from .addresses import AddressError, Resolver
from .triton_transport import TritonCallError, TritonTransport


class TritonHttpError(ConnectionError):
    """The server could not be reached, closed the connection, sent no HTTP, or did not answer in time."""


class ConnectionClosed(TritonHttpError):
    """The server closed the connection before answering."""


class Unreachable(TritonHttpError):
    """Nothing accepted the connection (refused, no route): the call never reached a server."""


class Answer:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer handed to `waiter`."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.open = False
        self.reusable = False
        self.born = asyncio.get_running_loop().time()

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport, self.open = transport, True
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a peer that vanished (its node died) is found out while the connection idles
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # bytes nobody asked for (an idle connection): never
            self.close()  # let them pass for the next call's answer
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(TritonHttpError(f"Triton answered something that is not HTTP: {error}"))
            self.close()

    def connection_lost(self, exc) -> None:
        self.open = False
        self._fail(ConnectionClosed("Triton closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Answer(self.parser.get_status_code(), self.headers, b"".join(self.body)))

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def send(self, request: bytes, body: bytes) -> asyncio.Future:
        self.headers, self.body, self.reusable = {}, [], False
        self.waiter = asyncio.get_running_loop().create_future()
        if len(body) < 65536:  # one write; a large body is not copied into the head's buffer
            self.transport.write(request + body)
        else:
            self.transport.write(request)
            self.transport.write(body)
        return self.waiter

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class TritonHttpClient:
    """Keep-alive connections to one Triton HTTP endpoint (`host:port`), opened as calls need them. A connection
    older than `max_age_s` is closed instead of reused (behind a virtual IP, a new connection may reach
    another pod); once `close()`d, connections still in use are closed when their call ends."""

    def __init__(self, url: str, keep_idle: int = 8, max_age_s: float | None = None):
        host, _, port = url.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit():
            raise ValueError(f"Triton HTTP address {url!r} is not HOST:PORT")
        self.host, self.port, self.keep_idle, self.max_age_s = host, int(port), keep_idle, max_age_s
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._idle: list[_Connection] = []
        self.closed = False

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(_Connection, self.host, self.port),
                                                   max(timeout, 0.0))
        except asyncio.TimeoutError:  # nothing answers the connection attempt (a dead node, dropped packets)
            raise TritonHttpError(f"Triton did not answer within the timeout: cannot connect to "
                                  f"{self.address}") from None
        except OSError as error:
            raise Unreachable(f"cannot connect to {self.address}: {error.strerror or error}") from None
        return connection

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                      timeout: float = 5.0) -> Answer:
        """One call, within `timeout` seconds in all (connecting included); a reused connection that the server
        had closed meanwhile is retried on the next idle one or a new one, within the same time."""
        head = [f"{method} {path} HTTP/1.1\r\nHost: {self.address}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in (headers or {}).items()]
        request = "".join(head).encode("latin-1") + b"\r\n"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._idle:
            connection = self._idle.pop()
            if connection.open and self._young(connection, loop.time()):
                try:
                    return await self._exchange(connection, request, body, deadline, timeout)
                except ConnectionClosed:
                    if connection.body or connection.headers:  # it had started answering: not a stale socket
                        raise
                except TritonHttpError:  # no answer in time: the other idle ones may lead to the same dead peer
                    self._drop_idle()
                    raise
            connection.close()  # closed while idle (Triton restarted, its keep-alive ran out) or too old: the next
            # one, or a new connection
        connection = await self._connect(deadline - loop.time())
        return await self._exchange(connection, request, body, deadline, timeout)

    async def _exchange(self, connection: _Connection, request: bytes, body: bytes, deadline: float,
                        timeout: float) -> Answer:
        waiter = connection.send(request, body)
        expire = asyncio.get_running_loop().call_at(
            deadline, lambda: waiter.done() or waiter.set_exception(
                TritonHttpError(f"Triton did not answer within {timeout} s")))
        try:
            answer = await waiter
        except BaseException:
            connection.close()  # a half-read answer or a cancelled call: the socket cannot be reused
            raise
        finally:
            expire.cancel()
        if connection.reusable and connection.open and not self.closed and len(self._idle) < self.keep_idle \
                and self._young(connection, asyncio.get_running_loop().time()):
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def _young(self, connection: _Connection, now: float) -> bool:
        return self.max_age_s is None or now - connection.born < self.max_age_s

    def _drop_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def shut(self) -> None:
        """No more calls: idle connections close now, busy ones when their call ends."""
        self.closed = True
        self._drop_idle()

    async def close(self) -> None:
        self.shut()


class HttpTransport(TritonTransport):
    """Triton's HTTP/REST protocol: tritonclient makes and reads the bodies (the binary tensor extension:
    a JSON header, then each tensor's raw bytes), `TritonHttpClient` carries them on keep-alive connections.

    Load spreading: the URL's names are resolved to addresses (addresses.Resolver: again every
    `resolve_interval_s` and after a failure), each address has its own pool of connections, and every call
    goes to the next address in turn (round robin), so a Triton pod that appears gets its share from the
    next lookup on. A call that cannot reach its address (refused, or the connection closed before an
    answer: the pod is gone) is tried on the next one within the same timeout, and that address is skipped
    for `resolve_interval_s`; the pool of an address the names no longer resolve to is dropped."""

    protocol = "http"

    def __init__(self, url: str, timeout_s: float = 5.0, resolve_interval_s: float = 5.0,
                 connection_max_age_s: float | None = None, lookup=None):
        super().__init__(url, timeout_s)
        self.resolver = Resolver(url, resolve_interval_s, timeout_s=min(timeout_s, 2.0),
                                 lookup=lookup)
        self.resolver.listeners.append(self._retire)
        self.connection_max_age_s = connection_max_age_s
        self.pools: dict[str, TritonHttpClient] = {}
        self._failed: dict[str, float] = {}  # address -> when a call last could not reach it
        self._turn = 0

    def pool(self, address: str) -> TritonHttpClient:
        pool = self.pools.get(address)
        if pool is None:
            pool = self.pools[address] = TritonHttpClient(address, max_age_s=self.connection_max_age_s)
        return pool

    def _retire(self, addresses: list[str]) -> None:
        """A new address list: the pools of addresses no longer in it close (calls in flight end first)."""
        for address in set(self.pools) - set(addresses):
            self.pools.pop(address).shut()
            self._failed.pop(address, None)

    def _order(self, addresses: list[str]) -> list[str]:
        """This call's addresses to try: the next healthy one in turn first, the others after it, the ones that
        failed within the resolve interval last."""
        now = asyncio.get_running_loop().time()
        healthy = [a for a in addresses if now - self._failed.get(a, float("-inf")) >= self.resolver.interval_s]
        resting = [a for a in addresses if a not in healthy]
        if healthy:
            start = self._turn % len(healthy)
            healthy = healthy[start:] + healthy[:start]
        self._turn += 1
        return healthy + resting

    @staticmethod
    def _path(model: str, version: str | None, *rest: str) -> str:
        path = f"/v2/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")
        return "/".join((path, *rest))

    async def _request(self, path: str, body: bytes = b"", headers: dict | None = None,
                       timeout: float | None = None) -> Answer:
        timeout = timeout or self.timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            addresses = await self.resolver.addresses()
        except AddressError as error:
            raise TritonCallError(str(error), answered=False, down=True) from None
        answer, problems = None, []
        for address in self._order(addresses):
            left = deadline - loop.time()
            if left <= 0:
                problems.append(f"Triton did not answer within {timeout} s")
                break
            try:
                answer = await self.pool(address).request("POST" if body else "GET", path, body, headers, left)
            except (Unreachable, ConnectionClosed) as error:  # never reached a server, or it went away: the next
                self._failed[address] = loop.time()
                self.resolver.stale()
                problems.append(str(error))
                continue
            except TritonHttpError as error:  # no answer in time, or not HTTP: no time or reason to try another
                raise TritonCallError("; ".join(problems + [str(error)]), answered=False, down=True) from None
            self._failed.pop(address, None)
            break
        if answer is None:
            raise TritonCallError("; ".join(problems), answered=False, down=True)
        if answer.status != 200:
            try:
                message = json.loads(answer.body)["error"]
            except (ValueError, KeyError, TypeError):
                message = answer.body[:200].decode("utf-8", "replace")
            raise TritonCallError(f"{message} (HTTP {answer.status})", answered=True,
                                  down=answer.status in (502, 503, 504))
        return answer

    async def metadata(self, model: str, version: str | None) -> dict:
        return json.loads((await self._request(self._path(model, version))).body)

    async def config(self, model: str, version: str) -> dict:
        return json.loads((await self._request(self._path(model, version, "config"))).body)

    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.http import InferenceServerClient, InferInput

        request = []
        for name, array in inputs.items():
            item = InferInput(name, list(array.shape), SERVED_INPUTS[name])
            item.set_data_from_numpy(array, binary_data=True)
            request.append(item)
        body, header_length = InferenceServerClient.generate_request_body(request)  # every output binary
        headers = {"Inference-Header-Content-Length": header_length} if header_length is not None else None
        answer = await self._request(self._path(model, version, "infer"), body, headers)
        length = answer.headers.get("inference-header-content-length")
        result = InferenceServerClient.parse_response_body(answer.body, header_length=int(length) if length else None)
        return {output["name"]: result.as_numpy(output["name"]) for output in result.get_response()["outputs"]}

    async def ready(self, model: str, version: str | None = None) -> bool:
        try:
            await self._request(self._path(model, version, "ready"), timeout=1.0)
            return True
        except TritonCallError:
            return False

    async def close(self) -> None:
        await self.resolver.close()
        for pool in self.pools.values():
            pool.shut()
        self.pools.clear()
