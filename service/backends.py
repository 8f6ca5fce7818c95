"""The two inference backends behind one interface: Triton over gRPC, or the model in-process.

    async describe(model, version) -> ModelSpec   # resolves version None to the latest served
    async infer(model, version, inputs) -> {task: logits float32 [B, classes]}
    async ready(model, version=None) -> bool
    async close()

Both raise `BackendError` (answered 503) when the server or the model cannot answer; its
`kind` says which (`backend_unavailable`, `model_not_ready`). Both run the same forward pass on
the same tensors: the embedded backend trims the copy's padding exactly as the Triton model
(export/triton_model.py) does, so their labels agree.

`EmbeddedBackend` loads MODEL_DIR/<model>/ (a model folder, version "1") or
MODEL_DIR/<model>/<N>/[model/] (numbered versions, the Triton repository layout works too) and
runs each model on its own single-thread executor under `torch.inference_mode`: inference
never blocks the event loop, one model's calls are serialised, and a slow shadow model never
queues in front of the primary.

`TritonBackend` holds one `tritonclient.grpc.aio` client (one HTTP/2 channel, multiplexed) for
the process; reconnect backoff is capped at 1 s so the gateway recovers within a second or two
of Triton coming back.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from adaudit.models.labels import TASKS
from adaudit.models.preprocessing import SERVED_INPUTS, AuditProcessor
from adaudit.models.tokenizer import GENERATED_TOKENIZER, TOKENIZER_PARAMETER, has_tokenizer

from .encoding import ModelSpec


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

        mask = torch.from_numpy(inputs["attention_mask"])
        length = max(int(mask.sum(1).max()), 1)  # as export/triton_model.py: trim the copy's padding
        with torch.inference_mode():
            logits = self.model(AuditProcessor.normalise(torch.from_numpy(inputs["image_bytes"])),
                                torch.from_numpy(inputs["input_ids"])[:, :length], mask[:, :length]).logits
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
    name = "triton"

    def __init__(self, url: str, timeout_s: float = 5.0, repository: Path | None = None):
        self.url, self.timeout_s = url, timeout_s
        self.repository = Path(repository) if repository is not None else None
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

    async def describe(self, model: str, version: str | None = None) -> ModelSpec:
        from tritonclient.utils import InferenceServerException

        try:
            metadata = await self.client().get_model_metadata(model, version or "", as_json=True,
                                                              client_timeout=self.timeout_s)
            if version is None:
                version = str(max(int(v) for v in metadata.get("versions", ["1"])))
            config = (await self.client().get_model_config(model, version, as_json=True,
                                                           client_timeout=self.timeout_s))["config"]
        except InferenceServerException as error:
            raise self._error(model, error) from None
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
        from tritonclient.grpc import InferInput
        from tritonclient.utils import InferenceServerException, triton_to_np_dtype

        request = []
        for name, array in inputs.items():
            item = InferInput(name, list(array.shape), SERVED_INPUTS[name])
            item.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(item)
        try:
            result = await self.client().infer(model, request, model_version=version,
                                               client_timeout=self.timeout_s)
        except InferenceServerException as error:
            raise self._error(model, error) from None
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


def make_backend(settings) -> EmbeddedBackend | TritonBackend:
    if settings.backend == "embedded":
        return EmbeddedBackend(settings.model_dir, settings.request_timeout_s)
    return TritonBackend(settings.triton_url, settings.request_timeout_s, settings.model_repository)
