"""Triton's gRPC protocol: one `tritonclient.grpc.aio` client (one HTTP/2 channel, multiplexed) for the
process, behind the transport interface of triton_transport.py. Its reconnect backoff is capped at 1 s,
so the gateway recovers within a second or two of Triton coming back."""

from __future__ import annotations

import numpy as np

from adaudit.models.preprocessing import SERVED_INPUTS

from .triton_transport import TritonCallError, TritonTransport


class GrpcTransport(TritonTransport):
    protocol = "grpc"

    def __init__(self, url: str, timeout_s: float = 5.0):
        super().__init__(url, timeout_s)
        self._client = None

    def client(self):
        if self._client is None:  # created inside the running event loop (grpc.aio binds to it)
            from tritonclient.grpc import aio as grpcclient

            large = 1 << 30
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=[
                ("grpc.max_send_message_length", large), ("grpc.max_receive_message_length", large),
                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 5_000),
            ])
        return self._client

    async def _call(self, method: str, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return await getattr(self.client(), method)(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as error:
            raise call_error(error) from None

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
            return bool(await self.client().is_model_ready(model, version or "", client_timeout=1.0))
        except (InferenceServerException, OSError):
            return False

    async def close(self) -> None:
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
