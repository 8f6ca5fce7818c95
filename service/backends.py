"""The two inference backends behind one interface: Triton (over HTTP or gRPC), or the model in-process.

    async describe(model, version) -> ModelSpec   # resolves version None to the latest served
    async infer(model, version, inputs) -> {task: logits float32 [B, classes]}
    async ready(model, version=None) -> bool
    async close()

Both raise `BackendError` (answered 503) when the server or the model cannot answer; its
`kind` says which (`backend_unavailable`, `model_not_ready`). Both run the same forward pass on
the same tensors (models/serving.py), so their labels agree.

`EmbeddedBackend` loads MODEL_DIR/<model>/ (a model folder, version "1") or
MODEL_DIR/<model>/<N>/[model/] (numbered versions, the Triton repository layout works too) and
runs each model on its own single-thread executor under `torch.inference_mode`: inference
never blocks the event loop, one model's calls are serialised, and a slow shadow model never
queues in front of the primary.

`TritonBackend` reads a Triton model's spec from its metadata and config, over one of two
protocols (`triton_protocol`): `TritonHttpBackend`, Triton's HTTP/REST protocol with binary
tensors (the bodies made and read by tritonclient, carried on keep-alive connections by
triton_http.py), the default since it costs 0.6-1 ms less per call on two cores; or
`TritonGrpcBackend`, one `tritonclient.grpc.aio` client (one HTTP/2 channel, multiplexed) whose
reconnect backoff is capped at 1 s. Either recovers within a second or two of Triton coming back.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np

from adaudit.models.labels import TASKS
from adaudit.models.preprocessing import SERVED_INPUTS
from adaudit.models.tokenizer import GENERATED_TOKENIZER, TOKENIZER_PARAMETER, has_tokenizer

from .encoding import ModelSpec
from .triton_http import TritonHttpClient, TritonHttpError


class BackendError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def unavailable(message: str) -> BackendError:
    return BackendError("backend_unavailable", message)


def not_ready(message: str) -> BackendError:
    return BackendError("model_not_ready", message)


# --- embedded -------------------------------------------------------------------------------
class _Loaded:
    def __init__(self, model, spec: ModelSpec):
        self.model, self.spec = model, spec
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"adaudit-{spec.name}")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from adaudit.models.serving import served_logits

        batch = {name: torch.from_numpy(inputs[name]) for name in SERVED_INPUTS}
        logits = served_logits(self.model, **batch)  # the forward the Triton model runs
        return {task: tensor.float().numpy() for task, tensor in logits.items()}


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, model_dir: Path, timeout_s: float = 5.0):
        self.model_dir, self.timeout_s = Path(model_dir), timeout_s
        self._loaded: dict[tuple[str, str], _Loaded] = {}
        self._loading = asyncio.Lock()

    def _folder(self, model: str, version: str | None) -> tuple[str, Path]:
        root = self.model_dir / model
        if (root / "config.json").is_file():
            if version not in (None, "1"):
                raise not_ready(f"model {model} has only version 1 in {root}")
            return "1", root
        versions = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) \
            if root.is_dir() else []
        if not versions:
            raise not_ready(f"model {model} is not in {self.model_dir} (no {root}/config.json or numbered versions)")
        chosen = version if version is not None else str(versions[0])
        folder = root / chosen
        if not folder.is_dir():
            raise not_ready(f"model {model} has no version {chosen} (versions: {versions})")
        return chosen, folder / "model" if (folder / "model" / "config.json").is_file() else folder

    async def _get(self, model: str, version: str | None) -> _Loaded:
        if (model, version) in self._loaded:
            return self._loaded[(model, version)]
        chosen, folder = self._folder(model, version)
        key = (model, chosen)
        if key not in self._loaded:
            async with self._loading:
                if key not in self._loaded:
                    self._loaded[key] = await asyncio.to_thread(self._load, model, chosen, folder)
        return self._loaded[key]

    @staticmethod
    def _load(model: str, version: str, folder: Path) -> _Loaded:
        from adaudit.models.modeling import AuditModel, ModelFolderError

        try:
            loaded = AuditModel.from_pretrained(folder)
        except ModelFolderError as error:
            raise not_ready(f"model {model} version {version} cannot be loaded: {error}") from None
        config = loaded.config
        spec = ModelSpec(model, version, config.image_size, config.max_text_length,
                         {task: tuple(names) for task, names in config.tasks.items()}, folder)
        return _Loaded(loaded, spec)

    async def describe(self, model: str, version: str | None = None) -> ModelSpec:
        return (await self._get(model, version)).spec

    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = await self._get(model, version)
        future = asyncio.get_running_loop().run_in_executor(loaded.executor, loaded.run, inputs)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise unavailable(f"model {model} did not answer within {self.timeout_s} s") from None

    async def ready(self, model: str, version: str | None = None) -> bool:
        try:
            await self._get(model, version)
            return True
        except BackendError:
            return False

    async def close(self) -> None:
        for loaded in self._loaded.values():
            loaded.executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()


# --- Triton ---------------------------------------------------------------------------------
class TritonBackend:
    """What both protocols share: the model's spec from its metadata and config, and the error kinds.
    A protocol supplies `_metadata`, `_config`, `_infer`, `ready` and `close`."""

    name = "triton"
    protocol = ""

    def __init__(self, url: str, timeout_s: float = 5.0, repository: Path | None = None):
        self.url, self.timeout_s = url, timeout_s
        self.repository = Path(repository) if repository is not None else None

    async def describe(self, model: str, version: str | None = None) -> ModelSpec:
        metadata = await self._metadata(model, version)
        if version is None:
            version = str(max(int(v) for v in metadata.get("versions", ["1"])))
        config = await self._config(model, version)
        inputs = {item["name"]: [int(d) for d in item["dims"]] for item in config.get("input", [])}
        outputs = {item["name"]: [int(d) for d in item["dims"]] for item in config.get("output", [])}
        try:
            image_size, max_text_length = inputs["image_bytes"][-1], inputs["input_ids"][-1]
        except KeyError:
            raise not_ready(f"Triton model {model} does not take image_bytes and input_ids (a repository exported "
                            f"before the uint8 picture input takes pixel_values: export it again)") from None
        tasks = {}
        for task, dims in outputs.items():
            if task not in TASKS or dims[-1] != len(TASKS[task]):
                raise not_ready(f"Triton model {model} output {task} {dims} does not match the label space")
            tasks[task] = TASKS[task]
        if not {"verdict", "violation"} <= set(tasks):
            raise not_ready(f"Triton model {model} has no verdict and violation outputs")
        return ModelSpec(model, version, image_size, max_text_length, tasks, self._tokenizer_folder(model, version, config),
                         max_batch_size=int(config.get("max_batch_size", 0)))

    def _tokenizer_folder(self, model: str, version: str, config: dict) -> Path | None:
        """Where this version's tokenizer is (None: the generated vocabulary), from the model repository."""
        tokenizer = config.get("parameters", {}).get(TOKENIZER_PARAMETER, {}).get("string_value", GENERATED_TOKENIZER)
        if self.repository is None:
            if tokenizer != GENERATED_TOKENIZER:
                raise not_ready(f"Triton model {model} has its own tokenizer ({tokenizer}): set model_repository "
                                "(ADAUDIT_MODEL_REPOSITORY) to the model repository Triton serves")
            return None
        folder = self.repository / model / version / "model"
        if not has_tokenizer(folder):
            raise not_ready(f"model {model} version {version}: no tokenizer in {folder} (model_repository "
                            f"{self.repository} is not the repository Triton serves)")
        return folder

    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._infer(model, version, {name: np.ascontiguousarray(array) for name, array in inputs.items()})


class TritonGrpcBackend(TritonBackend):
    """One `tritonclient.grpc.aio` client (one HTTP/2 channel, multiplexed) for the process; reconnect
    backoff is capped at 1 s so the gateway recovers within a second or two of Triton coming back."""

    protocol = "grpc"

    def __init__(self, url: str, timeout_s: float = 5.0, repository: Path | None = None):
        super().__init__(url, timeout_s, repository)
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

    def _error(self, model: str, error: Exception) -> BackendError:
        status = str(getattr(error, "status", lambda: "")() or "")
        message = getattr(error, "message", lambda: str(error))() or str(error)
        if "UNAVAILABLE" in status or "DEADLINE" in status or "CANCELLED" in status:
            return unavailable(f"Triton at {self.url} did not answer for model {model}: {message}")
        return not_ready(f"Triton at {self.url} cannot serve model {model}: {message}")

    async def _call(self, model: str, method: str, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return await getattr(self.client(), method)(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as error:
            raise self._error(model, error) from None

    async def _metadata(self, model: str, version: str | None) -> dict:
        return await self._call(model, "get_model_metadata", model, version or "", as_json=True)

    async def _config(self, model: str, version: str) -> dict:
        return (await self._call(model, "get_model_config", model, version, as_json=True))["config"]

    async def _infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.grpc import InferInput
        from tritonclient.utils import triton_to_np_dtype

        request = []
        for name, array in inputs.items():
            item = InferInput(name, list(array.shape), SERVED_INPUTS[name])
            item.set_data_from_numpy(array)
            request.append(item)
        result = await self._call(model, "infer", model, request, model_version=version)
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


class TritonHttpBackend(TritonBackend):
    """Triton's HTTP/REST protocol: tritonclient makes and reads the bodies (the binary tensor extension:
    a JSON header, then each tensor's raw bytes), triton_http.py carries them on keep-alive connections."""

    protocol = "http"

    def __init__(self, url: str, timeout_s: float = 5.0, repository: Path | None = None):
        super().__init__(url, timeout_s, repository)
        self.client = TritonHttpClient(url)

    @staticmethod
    def _path(model: str, version: str | None, *rest: str) -> str:
        path = f"/v2/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")
        return "/".join((path, *rest))

    async def _request(self, model: str, path: str, body: bytes = b"", headers: dict | None = None,
                   timeout: float | None = None):
        try:
            answer = await self.client.request("POST" if body else "GET", path, body, headers,
                                               timeout or self.timeout_s)
        except TritonHttpError as error:
            raise unavailable(f"Triton at {self.url} did not answer for model {model}: {error}") from None
        if answer.status != 200:
            try:
                message = json.loads(answer.body)["error"]
            except (ValueError, KeyError, TypeError):
                message = answer.body[:200].decode("utf-8", "replace")
            error = unavailable if answer.status in (502, 503, 504) else not_ready
            raise error(f"Triton at {self.url} cannot serve model {model}: {message} (HTTP {answer.status})")
        return answer

    async def _metadata(self, model: str, version: str | None) -> dict:
        return json.loads((await self._request(model, self._path(model, version))).body)

    async def _config(self, model: str, version: str) -> dict:
        return json.loads((await self._request(model, self._path(model, version, "config"))).body)

    async def _infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tritonclient.http import InferenceServerClient, InferInput

        request = []
        for name, array in inputs.items():
            item = InferInput(name, list(array.shape), SERVED_INPUTS[name])
            item.set_data_from_numpy(array, binary_data=True)
            request.append(item)
        body, header_length = InferenceServerClient.generate_request_body(request)  # every output binary
        headers = {"Inference-Header-Content-Length": header_length} if header_length is not None else None
        answer = await self._request(model, self._path(model, version, "infer"), body, headers)
        length = answer.headers.get("inference-header-content-length")
        result = InferenceServerClient.parse_response_body(answer.body, header_length=int(length) if length else None)
        return {output["name"]: result.as_numpy(output["name"]) for output in result.get_response()["outputs"]}

    async def ready(self, model: str, version: str | None = None) -> bool:
        try:
            await self._request(model, self._path(model, version, "ready"), timeout=1.0)
            return True
        except BackendError:
            return False

    async def close(self) -> None:
        await self.client.close()


def make_backend(settings) -> EmbeddedBackend | TritonBackend:
    if settings.backend == "embedded":
        return EmbeddedBackend(settings.model_dir, settings.request_timeout_s)
    kind = TritonHttpBackend if settings.triton_protocol == "http" else TritonGrpcBackend
    return kind(settings.triton_url, settings.request_timeout_s, settings.model_repository)
