"""The boundary between the Triton backend and the wire: one small interface, two transports.

    protocol, url
    async metadata(model, version | None) -> dict    # Triton's model metadata (its versions)
    async config(model, version) -> dict             # the model's config, as JSON
    async infer(model, version, inputs) -> {output: array}   # inputs contiguous, named as served
    async ready(model, version | None) -> bool       # never raises; waits about a second at most
    async close()

`HttpTransport` (triton_http.py: Triton's HTTP/REST protocol with binary tensors, the default)
and `GrpcTransport` (triton_grpc.py: tritonclient's asyncio gRPC client). A transport only moves
requests and answers; a call that fails raises `TritonCallError`, saying whether Triton answered
and whether the server or only the model is the problem. Everything else, the model's spec, its
tokenizer folder and the gateway's error kinds and messages, is `backends.TritonBackend`'s,
written once for both protocols.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class TritonCallError(Exception):
    """A Triton call that failed. `answered`: Triton answered with a refusal (its message in `detail`),
    rather than not at all (unreachable, connection closed, timed out). `down`: the server cannot answer
    now (the gateway's `backend_unavailable`), rather than this model (`model_not_ready`)."""

    def __init__(self, detail: str, answered: bool, down: bool):
        super().__init__(detail)
        self.detail, self.answered, self.down = detail, answered, down


class TritonTransport(ABC):
    protocol = ""

    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url, self.timeout_s = url, timeout_s

    @abstractmethod
    async def metadata(self, model: str, version: str | None) -> dict: ...

    @abstractmethod
    async def config(self, model: str, version: str) -> dict: ...

    @abstractmethod
    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    async def ready(self, model: str, version: str | None = None) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...
