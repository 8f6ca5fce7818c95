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

`TritonBackend` reads a Triton model's spec from its metadata and config, checks it against the
label space, finds the model's tokenizer and names the errors, once for both protocols, over a
transport (triton_transport.py: metadata, config, infer, ready, close) that the settings pick
(`triton_protocol`, in `make_backend`): `HttpTransport` (triton_http.py), Triton's HTTP/REST
protocol with binary tensors on keep-alive connections, the default since its calls cost less
on a small machine (benchmarks/results/serving-history.md); or `GrpcTransport`
(triton_grpc.py), one `tritonclient.grpc.aio` client whose reconnect backoff is capped at 1 s.
Either recovers within a second or two of Triton coming back.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from adaudit.models.labels import DEFAULT_TAXONOMY, TAXONOMY_PARAMETER, Taxonomy, TaxonomyError, parse_taxonomy
from adaudit.models.preprocessing import IMAGE_FIT_PARAMETER, IMAGE_FITS, SERVED_INPUTS
from adaudit.models.tokenizer import GENERATED_TOKENIZER, TOKENIZER_PARAMETER, has_tokenizer

from .encoding import ModelSpec
from .triton_grpc import GrpcTransport
from .triton_http import HttpTransport
from .triton_transport import TritonCallError, TritonTransport


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
                         {task: tuple(names) for task, names in config.tasks.items()}, folder,
                         taxonomy=config.taxonomy, image_fit=config.image_fit)
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
    """The backend logic for Triton, whatever the protocol: the model's spec from its metadata and config,
    its tokenizer folder, and the gateway's error for a failed call. `transport` moves the calls."""

    name = "triton"

    def __init__(self, transport: TritonTransport, repository: Path | None = None):
        self.transport = transport
        self.repository = Path(repository) if repository is not None else None

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def protocol(self) -> str:
        return self.transport.protocol

    async def _call(self, model: str, call, *args):
        try:
            return await call(*args)
        except TritonCallError as error:
            answer = unavailable if error.down else not_ready
            where = "cannot serve" if error.answered else "did not answer for"
            raise answer(f"Triton at {self.url} {where} model {model}: {error.detail}") from None

    async def describe(self, model: str, version: str | None = None) -> ModelSpec:
        metadata = await self._call(model, self.transport.metadata, model, version)
        if version is None:
            version = str(max(int(v) for v in metadata.get("versions", ["1"])))
        config = await self._call(model, self.transport.config, model, version)
        inputs = {item["name"]: [int(d) for d in item["dims"]] for item in config.get("input", [])}
        outputs = {item["name"]: [int(d) for d in item["dims"]] for item in config.get("output", [])}
        try:
            image_size, max_text_length = inputs["image_bytes"][-1], inputs["input_ids"][-1]
        except KeyError:
            raise not_ready(f"Triton model {model} does not take image_bytes and input_ids (a repository exported "
                            f"before the uint8 picture input takes pixel_values: export it again)") from None
        taxonomy = served_taxonomy(model, config)
        tasks = {}
        for task, dims in outputs.items():
            if task not in taxonomy.tasks or dims[-1] != len(taxonomy.tasks[task]):
                raise not_ready(f"Triton model {model} output {task} {dims} does not match its taxonomy's tasks "
                                f"({', '.join(taxonomy.tasks)})")
            tasks[task] = taxonomy.tasks[task]
        if not {taxonomy.verdict_task, taxonomy.reason_task} <= set(tasks):
            raise not_ready(f"Triton model {model} has no {taxonomy.verdict_task} and {taxonomy.reason_task} outputs")
        return ModelSpec(model, version, image_size, max_text_length, tasks, self._tokenizer_folder(model, version, config),
                         max_batch_size=int(config.get("max_batch_size", 0)), taxonomy=taxonomy,
                         image_fit=served_image_fit(model, config))

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
        contiguous = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        return await self._call(model, self.transport.infer, model, version, contiguous)

    async def ready(self, model: str, version: str | None = None) -> bool:
        return await self.transport.ready(model, version)

    async def close(self) -> None:
        await self.transport.close()


def served_taxonomy(model: str, config: dict) -> Taxonomy:
    """The taxonomy a Triton model's config carries (export/repository.py writes it as a parameter); the
    default for a repository exported before taxonomies, whose outputs are then checked against it."""
    text = config.get("parameters", {}).get(TAXONOMY_PARAMETER, {}).get("string_value")
    if text is None:
        return DEFAULT_TAXONOMY
    try:
        return parse_taxonomy(json.loads(text), f"Triton model {model} parameter {TAXONOMY_PARAMETER}")
    except json.JSONDecodeError as error:
        raise not_ready(f"Triton model {model} parameter {TAXONOMY_PARAMETER} is not JSON ({error.msg})") from None
    except TaxonomyError as error:
        raise not_ready(str(error)) from None


def served_image_fit(model: str, config: dict) -> str:
    """How a Triton model fits pictures to its square (export/repository.py writes it as a parameter); squash
    for a repository exported before the choice existed, the only fit there was."""
    fit = config.get("parameters", {}).get(IMAGE_FIT_PARAMETER, {}).get("string_value", "squash")
    if fit not in IMAGE_FITS:
        raise not_ready(f"Triton model {model} parameter {IMAGE_FIT_PARAMETER} is {fit!r}, not one of "
                        f"{', '.join(IMAGE_FITS)}")
    return fit


def make_backend(settings) -> EmbeddedBackend | TritonBackend:
    if settings.backend == "embedded":
        return EmbeddedBackend(settings.model_dir, settings.request_timeout_s)
    transport = HttpTransport if settings.triton_protocol == "http" else GrpcTransport
    # round robin over the addresses triton_url names or resolves to, looked up again periodically (addresses.py)
    return TritonBackend(transport(settings.triton_url, settings.request_timeout_s,
                                   resolve_interval_s=settings.triton_resolve_interval_s,
                                   connection_max_age_s=settings.triton_connection_max_age_s),
                         settings.model_repository)
