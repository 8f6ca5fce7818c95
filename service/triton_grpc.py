"""Triton's gRPC protocol: a `tritonclient.grpc.aio` client (one HTTP/2 channel, multiplexed) behind the
transport interface of triton_transport.py. Its reconnect backoff is capped at 1 s, so the gateway
recovers within a second or two of Triton coming back.

Load spreading: the channel balances its calls over every address of the URL with gRPC's `round_robin`
policy (one subchannel per address, each call on the next ready one). For one host name the channel's
target is `dns:///host:port`; for several `host:port` it is the list the names resolve to
(`ipv4:a:p,b:p`). gRPC's DNS resolver looks the name up again only when a connection breaks, so a Triton
pod added while all are healthy would never be called: the transport resolves the names itself too
(addresses.Resolver, every `resolve_interval_s`) and opens a new channel when the list changes or the
channel is older than `connection_max_age_s`; the old channel closes once its calls had time to end."""

from __future__ import annotations

import asyncio

import numpy as np

from adaudit.models.preprocessing import SERVED_INPUTS

from .addresses import AddressError, Resolver
from .triton_transport import TritonCallError, TritonTransport


class GrpcTransport(TritonTransport):
    protocol = "grpc"

    def __init__(self, url: str, timeout_s: float = 5.0, resolve_interval_s: float = 5.0,
                 connection_max_age_s: float | None = None, lookup=None):
        super().__init__(url, timeout_s)
        self.resolver = Resolver(url, resolve_interval_s, timeout_s=min(timeout_s, 2.0), lookup=lookup)
        self.connection_max_age_s = connection_max_age_s
        self._client = None
        self._addresses: tuple[str, ...] = ()
        self._opened = 0.0
        self._retiring: set[asyncio.Task] = set()

    def target(self, addresses: list[str]) -> str:
        """The channel's target: `dns:///host:port` for one host name, else the resolved addresses."""
        if len(self.resolver.targets) == 1 and not self.resolver.static:
            host, port = self.resolver.targets[0]
            return f"dns:///{host}:{port}"
        v4 = [a for a in addresses if not a.startswith("[")]
        return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(addresses)

    async def client(self):
        """The channel's client for the current addresses: a new one when they changed or it is too old."""
        try:
            addresses = tuple(sorted(await self.resolver.addresses()))
        except AddressError as error:
            raise TritonCallError(str(error), answered=False, down=True) from None
        now = asyncio.get_running_loop().time()
        old = self._client is not None and self.connection_max_age_s is not None and \
            now - self._opened >= self.connection_max_age_s
        if self._client is None or addresses != self._addresses or old:
            from tritonclient.grpc import aio as grpcclient  # created inside the running loop (grpc.aio binds to it)

            large = 1 << 30
            previous = self._client
            self._client = grpcclient.InferenceServerClient(self.target(list(addresses)), channel_args=[
                ("grpc.max_send_message_length", large), ("grpc.max_receive_message_length", large),
                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 5_000), ("grpc.lb_policy_name", "round_robin"),
                ("grpc.dns_min_time_between_resolutions_ms", 1000),
            ])
            self._addresses, self._opened = addresses, now
            if previous is not None:  # calls in flight on it end (or time out) first
                task = asyncio.get_running_loop().create_task(self._retire(previous))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        return self._client

    async def _retire(self, client) -> None:
        try:
            await asyncio.sleep(self.timeout_s + 1)
        finally:  # also when the transport closes first: the old channel never outlives it
            await client.close()

    async def _call(self, method: str, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        client = await self.client()
        try:
            return await getattr(client, method)(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as error:
            failure = call_error(error)
            if failure.down:
                self.resolver.stale()
            raise failure from None

    async def metadata(self, model: str, version: str | None) -> dict:
        return await self._call("get_model_metadata", model, version or "", as_json=True)

    async def config(self, model: str, version: str) -> dict:
        return (await self._call("get_model_config", model, version, as_json=True))["config"]

    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.grpc import InferInput
        from tritonclient.utils import triton_to_np_dtype

        request = []
        for name, array in inputs.items():
            item = InferInput(name, list(array.shape), SERVED_INPUTS[name])
            item.set_data_from_numpy(array)
            request.append(item)
        result = await self._call("infer", model, request, model_version=version)
        response = result.get_response()  # each output's bytes in order (InferResult.as_numpy looks each name up)
        return {output.name: np.frombuffer(raw, triton_to_np_dtype(output.datatype)).reshape(tuple(output.shape))
                for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)}

    async def ready(self, model: str, version: str | None = None) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(await (await self.client()).is_model_ready(model, version or "", client_timeout=1.0))
        except (InferenceServerException, TritonCallError, OSError):
            return False

    async def close(self) -> None:
        await self.resolver.close()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None


def call_error(error: Exception) -> TritonCallError:
    """A gRPC status of a server that did not answer (unavailable, past the deadline, cancelled), or Triton's
    refusal."""
    status = str(getattr(error, "status", lambda: "")() or "")
    message = getattr(error, "message", lambda: str(error))() or str(error)
    down = "UNAVAILABLE" in status or "DEADLINE" in status or "CANCELLED" in status
    return TritonCallError(message, answered=not down, down=down)
