"""Where a run computes: `--device auto|cpu|cuda|cuda:N`, resolved in one place.

Every command that trains or evaluates (`teacher train`, `compress`, `eval`) takes the same option and
passes it here, so the rules are written once:

- `auto` is CUDA when torch sees a GPU, else the CPU; `cuda` is the GPU of this process (cuda:LOCAL_RANK
  under torchrun, else cuda:0); asking for CUDA on a machine without it is a `DeviceError` (one line).
- Autocast follows the device type: bfloat16 on a GPU that supports it and on a CPU with native bfloat16
  (AVX-512 BF16 or AMX; elsewhere bfloat16 is emulated and slower than float32); float16 with a
  `GradScaler` on a GPU without bfloat16 (float16's range needs the loss scaled). Weights, optimizer
  state and evaluation stay float32.
- `Placement.place` moves the model and hooks its forward so that its inputs follow it to the device
  (from pinned memory, `non_blocking`, on CUDA) and, in a forward without gradients (evaluation,
  calibration, the teacher's cached outputs, measurements), its outputs come back to the CPU. Why a hook:
  those callers index CPU tensors (labels, splits) with what the model returns, and they live in layers
  that should not each learn about devices; training's losses move their own targets to the output's device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

DEVICE_HELP = "auto (CUDA when present), cpu, cuda, or cuda:N"
HOOKED = "_adaudit_placement_hooks"


class DeviceError(ValueError):
    """A --device this machine cannot honour (no CUDA, no such GPU, an unknown name)."""


def bfloat16_supported() -> bool:
    """Native bfloat16 on this CPU: only there is bfloat16 autocast faster than float32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported()) or bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_device(name: str | None, local_rank: int | None = None) -> torch.device:
    """`--device` -> a torch.device, refusing what this machine does not have before any work starts."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise DeviceError(f"--device must be {DEVICE_HELP}, not {name!r}")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"--device {text}: this machine has no CUDA ({build} {torch.__version__}); "
                          f"use --device cpu or auto")
    if match.group(1) is not None and local_rank is not None:
        raise DeviceError(f"--device {text} names one GPU, but this run has several processes: use --device "
                          f"cuda (each process takes cuda:LOCAL_RANK)")
    index = int(match.group(1)) if match.group(1) is not None else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")
    return torch.device("cuda", index)


def autocast_dtype(device: torch.device, bfloat16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for `device`; `bfloat16` True/False forces bfloat16 or float32, None decides."""
    if bfloat16 is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if bfloat16 or torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if bfloat16 or bfloat16_supported() else None


def to_device(value, device: torch.device):
    """Tensors (also inside dicts, lists, tuples and dataclass-like outputs) on `device`; on CUDA a CPU
    tensor is pinned first so the copy is asynchronous (`non_blocking`)."""
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return value
        if device.type == "cuda" and value.device.type == "cpu":
            return value.pin_memory().to(device, non_blocking=True)
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    if hasattr(value, "__dataclass_fields__"):
        for field in value.__dataclass_fields__:
            setattr(value, field, to_device(getattr(value, field), device))
    return value


@dataclass(frozen=True)
class Placement:
    """A device and the autocast that goes with it: what the training loop and the commands share."""

    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: float32

    @classmethod
    def on(cls, device: torch.device | str = "cpu", bfloat16: bool | None = None) -> "Placement":
        device = torch.device(device)
        return cls(device, autocast_dtype(device, bfloat16))

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, on only for float16 (bfloat16 has float32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def record(self) -> dict:
        return {"device": str(self.device), "autocast": None if self.dtype is None else str(self.dtype)[6:]}

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this device, its inputs following it (and its outputs back to the CPU without
        gradients); placing it again (a pruned copy, another stage) only moves it."""
        model.to(self.device)
        if self.device.type == "cpu" or getattr(model, HOOKED, None) == self.device:
            return model
        device = self.device

        def inputs_to_device(module, args, kwargs):
            return to_device(args, device), to_device(kwargs, device)

        def outputs_to_cpu(module, args, kwargs, output):
            return output if torch.is_grad_enabled() else to_device(output, torch.device("cpu"))

        model.register_forward_pre_hook(inputs_to_device, with_kwargs=True)
        model.register_forward_hook(outputs_to_cpu, with_kwargs=True)
        setattr(model, HOOKED, device)
        return model


CPU = Placement.on("cpu")
