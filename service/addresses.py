"""Where Triton is: the addresses `triton_url` names, resolved again and again, for client-side round robin.

`triton_url` is one `host:port` or several separated by commas (`10.0.0.5:8000,10.0.0.6:8000`, or two
bundled tritonservers on loopback ports as one service). In Kubernetes it is the name of Triton's
headless Service, which resolves to the address of every ready Triton pod: the gateway spreads its
calls over those addresses itself (a ClusterIP Service would pin each keep-alive connection, or the
one gRPC channel, to the pod it first reached, so pods the autoscaler adds would get little traffic).

`Resolver` keeps the current address list: it looks the names up again once `interval_s` has passed
(in the background: a call never waits for DNS once a list is known) and at once after a call failed
to reach an address (`stale()`). A name that resolves to nothing (NXDOMAIN, no records: the Service has
no ready pod, or the name is wrong) empties its part of the list, and a call is refused at once with
an error naming the host; a temporary DNS failure keeps the last list known.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable


class AddressError(ConnectionError):
    """No address to call: every name of the URL resolves to nothing, or the lookup failed."""


def parse_targets(url: str) -> list[tuple[str, int]]:
    """`host:port[,host:port...]` -> [(host, port)]; an IPv6 host in brackets (`[::1]:8000`). ValueError names
    the entry that is not HOST:PORT."""
    targets = []
    for entry in (part.strip() for part in url.split(",")):
        host, _, port = entry.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Triton address {entry!r} must be host:port" + (f" (in {url!r})" if entry != url else ""))
        targets.append((host, int(port)))
    return targets


def endpoint(host: str, port: int) -> str:
    """`ip:port`, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


Lookup = Callable[[str, int], Awaitable[list[str]]]


async def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver's TCP addresses of `host` (in its order, without repeats), as `ip:port`."""
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(endpoint(address[4][0], port) for address in answers))


NO_SUCH_NAME = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY", "EAI_FAIL")
                if hasattr(socket, name)}


class Resolver:
    """The addresses of the URL's names, looked up again every `interval_s` and after a failure."""

    def __init__(self, url: str, interval_s: float = 5.0, timeout_s: float = 2.0, lookup: Lookup | None = None):
        self.url, self.targets = url, parse_targets(url)
        self.interval_s, self.timeout_s, self.lookup = interval_s, timeout_s, lookup
        self.names = ", ".join(host for host, _ in self.targets)
        # per target: its last answer (None: never looked up); literal addresses need no lookup
        self._known: dict[tuple[str, int], list[str] | None] = {
            target: [endpoint(*target)] if is_ip(target[0]) else None for target in self.targets}
        self._problem: dict[tuple[str, int], str] = {}
        self._resolved_at = float("-inf") if None in self._known.values() else float("inf")
        self._task: asyncio.Task | None = None
        self.listeners: list[Callable[[list[str]], None]] = []  # told each new list (a transport drops pools)

    @property
    def static(self) -> bool:
        """Every entry is an IP address: nothing to look up."""
        return all(is_ip(host) for host, _ in self.targets)

    def current(self) -> list[str]:
        return list(dict.fromkeys(a for addresses in self._known.values() for a in (addresses or ())))

    def stale(self) -> None:
        """A call could not reach an address: look the names up again before the interval ends."""
        if not self.static:
            self._resolved_at = float("-inf")

    async def addresses(self) -> list[str]:
        """The current list, looked up first when none is known yet; a list older than the interval is refreshed
        in the background. AddressError (naming the hosts) when there is no address at all."""
        if None in self._known.values():
            await self.refresh()
        elif time.monotonic() - self._resolved_at >= self.interval_s and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.refresh())
        addresses = self.current()
        if not addresses:
            problems = "; ".join(f"{host}: {self._problem.get((host, port), 'no address')}"
                                 for host, port in self.targets)
            raise AddressError(f"Triton host {self.names} resolves to no address ({problems})")
        return addresses

    async def refresh(self) -> list[str]:
        self._resolved_at = time.monotonic()  # a failing lookup is retried after the interval, not on every call
        before = self.current()
        for target in self.targets:
            if is_ip(target[0]):
                continue
            try:
                found = await asyncio.wait_for((self.lookup or system_lookup)(*target), self.timeout_s)
            except socket.gaierror as error:
                self._problem[target] = error.strerror or str(error)
                if error.errno in NO_SUCH_NAME or self._known[target] is None:
                    self._known[target] = []  # the name is gone (or was never there): no stale address is called
                continue  # a temporary failure (EAI_AGAIN): the last answer stays
            except (asyncio.TimeoutError, OSError) as error:
                self._problem[target] = f"lookup failed: {error or 'no answer within %s s' % self.timeout_s}"
                if self._known[target] is None:
                    self._known[target] = []
                continue
            self._known[target] = found
            self._problem.pop(target, None)
        after = self.current()
        if after != before:
            for listener in self.listeners:
                listener(after)
        return after

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
