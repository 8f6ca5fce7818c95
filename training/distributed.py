"""Several processes, on one machine or many: PyTorch's own torch.distributed, launched by torchrun.

Nothing here launches or coordinates processes itself. `torchrun --nproc-per-node N [--nnodes ...] -m
adaudit teacher train ...` starts the ranks and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR;
`adaudit teacher train ... --nproc-per-node N` runs torchrun for you (`launch`). Inside a rank, `start`
joins the process group (NCCL between GPUs, gloo between CPU processes), and `World` holds what the
training loop needs from it:

- DistributedDataParallel around the model (gradients averaged across ranks at every step);
- a DistributedSampler over the training ads, seeded as the single-process loop always was
  (seed * 1000 + epoch), so 1 rank draws the very permutation it drew before distribution existed;
- the global batch kept what the preset says: each rank takes global / world_size ads per step, and the
  DistributedSampler interleaves ranks so the ads of one step across all ranks are exactly the ads of the
  single-process step (`per_rank_batch`); a world size that does not divide it is refused;
- rank 0 alone logs and writes (`is_main_process` works before the group exists, from RANK);
- what rank 0 alone decides or measures reaches the others (`agreed`), so every rank makes the same cut;
- FSDP2 instead of DDP (`World.fsdp`, `teacher train --fsdp`) for a teacher whose weights, gradients and
  optimizer state do not fit one device: `fully_shard` on every block of every tower, then on the whole model,
  so each rank holds 1/world_size of them; the full weights and optimizer state are gathered to rank 0 (on the
  CPU) only to write a checkpoint or the teacher (`unsharded`), in the format a single process writes, so a
  checkpoint resumes under FSDP, DDP or one process alike. Under `compress` every cut reads the whole weights,
  so there a sharded replica distils and its weights are gathered back after every epoch (`gather_into`,
  compression/distillation.py's `distil_sharded`).
"""

from __future__ import annotations

import gc
import hashlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import resolve_device


# How long a rank waits at a collective for the others. Under `compress` rank 0 alone measures the teacher and every
# stage on the test split (latency, accuracy) while the other ranks wait at the next collective: on a large teacher
# that is many minutes, longer than torch's 10-minute default. A rank that dies is noticed by torchrun at once anyway.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


class DistributedError(ValueError):
    """A run the process group cannot do (batch not divisible, a rank that died); one readable line."""


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 (or no torchrun at all): the one process that logs and writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def main_process_only(log):
    """`log` on rank 0; a no-op on every other rank, so N ranks print one log, not N."""
    return log if is_main_process() else (lambda message: None)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The ads each rank takes per step so that the global batch stays `global_batch`."""
    if world_size < 1 or global_batch % world_size:
        raise DistributedError(f"a world size of {world_size} does not divide the global batch of {global_batch} "
                               f"ads: choose a number of processes that divides {global_batch}")
    return global_batch // world_size


@dataclass
class World:
    """This process's place among the ranks (a single process: rank 0 of 1, no backend)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    fsdp: bool = False  # shard the model (FSDP2) instead of replicating it (DDP)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def record(self) -> dict:
        """metrics.json's / report.json's `distributed` entry."""
        return {"world_size": self.world_size, "backend": self.backend, "device": str(self.device),
                **({"fsdp": True} if self.fsdp else {})}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around `model` across ranks (or, with `fsdp`, the model sharded in place); the model itself for
        one process. Call it before making the optimizer: FSDP2 replaces the parameters by their shards. Unused
        parameters are looked for because the industry picture head sits out a step whose ads all mismatch
        their picture."""
        if not self.distributed:
            return model
        if self.fsdp:
            return shard(model)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def sampler(self, size: int, seed: int):
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(range(size), num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                  seed=seed)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agreed(self, decide):
        """What rank 0 decides, on every rank: `decide()` runs on rank 0 alone and its result (a picklable value
        on the CPU) is broadcast. Pruning decisions go through here, so that every rank cuts the same heads, neurons
        and blocks even where floating-point sums could differ across processes, and the others skip the work."""
        if not self.distributed:
            return decide()
        holder = [decide() if self.main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def everywhere(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank (one answer all ranks act on)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def gathered(self, value) -> list:
        """`value` from every rank, in rank order (a picklable value)."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def check_same_model(self, model: torch.nn.Module, what: str) -> None:
        """Every rank must end holding the same weights (DDP keeps them equal; the cuts are `agreed`): a digest
        of each rank's state, compared, and DistributedError naming the ranks that differ."""
        digests = self.gathered(state_digest(model))
        differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differing:
            raise DistributedError(f"ranks {differing} hold another {what} than rank 0: the ranks diverged, "
                                   "nothing was written")

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """A checkpoint's optimizer state (a single process's format: parameters numbered) into `optimizer`;
        under FSDP each rank keeps its shard of it."""
        if not (self.distributed and self.fsdp):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(parameter): name for name, parameter in model.named_parameters()}
        order = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
        named = {"state": {order[number]: slots for number, slots in state["state"].items()},
                 "param_groups": [{**group, "params": [order[number] for number in group["params"]]}
                                  for group in state["param_groups"]]}
        for group, saved in zip(optimizer.param_groups, state["param_groups"]):  # keys a scheduler added (initial_lr)
            group.update({key: value for key, value in saved.items() if key not in group})
        # strict=False: a parameter no step has touched (DINOv2's mask token) has no state, as in one process's
        set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True, strict=False))

    def unsharded(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
        """(model, optimizer state) as one process would hold them, on rank 0: under FSDP the full weights and
        optimizer state gathered from every rank to the CPU (every rank must call this; the others get
        (None, None)); otherwise the model itself and its optimizer's state."""
        if not (self.distributed and self.fsdp):
            return model, None if optimizer is None else optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 alone receives them
        weights = get_model_state_dict(model, options=options)
        state = self.optimizer_state_on_rank_zero(model, optimizer)
        if not self.main:
            return None, None
        from adaudit.models.modeling import AuditModel

        return AuditModel.from_state(model.config, weights, model.tokenizer), state

    def gather_into(self, whole: torch.nn.Module, sharded: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """The FSDP-sharded `sharded`'s full weights loaded into `whole` (the same model, not sharded) on every
        rank, and its optimizer's full state on rank 0 (`optimizer_state_on_rank_zero`). Every rank must call
        this: both are gathered from every rank's shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        whole.load_state_dict(get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True)))
        return self.optimizer_state_on_rank_zero(sharded, optimizer)

    def optimizer_state_on_rank_zero(self, sharded: torch.nn.Module,
                                     optimizer: torch.optim.Optimizer | None) -> dict | None:
        """The FSDP-sharded model's optimizer's full state gathered to rank 0 on the CPU, numbered as one process
        numbers it (a checkpoint's format); None on the other ranks or without an optimizer. Every rank must
        call this."""
        if optimizer is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 alone receives it
        named = get_optimizer_state_dict(sharded, optimizer, options=options)
        return numbered_optimizer_state(named) if self.main else None

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed over every rank (every rank gets the sums)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def start(device_name: str | None = "auto", fsdp: bool = False) -> World:
    """This process's World: joins the process group when torchrun started several ranks; `fsdp`: they shard
    the model instead of replicating it (one process has nothing to shard it across)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return World(resolve_device(device_name), fsdp=fsdp)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None,
                                timeout=COLLECTIVE_TIMEOUT)
    return World(device, dist.get_rank(), world_size, local_rank, backend, fsdp)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 on `model` in place: each block of every tower its own unit (its weights gathered just before it
    runs, freed after), then the rest of the model as the root unit."""
    from torch.distributed.fsdp import fully_shard

    from adaudit.models.configuration import TOWERS

    for tower in TOWERS:
        for block in model.blocks(tower):
            fully_shard(block)
    fully_shard(model)
    return model


def numbered_optimizer_state(named: dict) -> dict:
    """An optimizer state keyed by parameter names (torch.distributed.checkpoint's) keyed as one process's
    `optimizer.state_dict()` is: parameters numbered in the order of the parameter groups."""
    order = [name for group in named["param_groups"] for name in group["params"]]
    number = {name: index for index, name in enumerate(order)}
    return {"state": {number[name]: slots for name, slots in named["state"].items()},
            "param_groups": [{**group, "params": [number[name] for name in group["params"]]}
                             for group in named["param_groups"]]}


def state_digest(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the model's state, names and bytes: equal only for bit-identical models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def joined(device_name: str | None = "auto", fsdp: bool = False) -> Iterator[World]:
    """`start`'s World for the work inside the block, then leave the process group. When the block completes,
    every rank first drops what still refers to the group (FSDP2's sharded tensors hold its device mesh; freeing
    them is a cycle collection away) and waits at a barrier for the others, rank 0 included, which evaluates
    and writes meanwhile (COLLECTIVE_TIMEOUT covers that), so all ranks tear the group down together while
    their interpreters are whole. A rank that left alone while rank 0 still held the connection was once
    killed by SIGABRT in gloo's teardown ("terminate called without an active exception", CI, FSDP2 on 2 CPU
    ranks). After a failure there is no barrier: the other ranks may be inside a collective that never
    completes, and torchrun stops them anyway."""
    world = start(device_name, fsdp)
    leaves = world.distributed and dist.is_initialized()
    try:
        yield world
        if leaves:
            gc.collect()
            dist.barrier()
    finally:
        if leaves:
            dist.destroy_process_group()


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE` (the relaunched ranks must not relaunch)."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == option:
            skip = True
        elif not argument.startswith(option + "="):
            kept.append(argument)
    return kept


def launch(argv: list[str], nproc_per_node: int) -> None:
    """Run `python -m adaudit ARGV` as `nproc_per_node` ranks through torchrun (torch.distributed.run), on
    this machine (--standalone rendezvous). A rank that fails stops the others (torchrun's agent does);
    this raises one DistributedError naming the first rank that failed."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = run.parse_args(["--standalone", f"--nproc-per-node={nproc_per_node}", "--module", "adaudit",
                           *without_option(argv, "--nproc-per-node")])
    try:
        run.run(args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        raise DistributedError(f"rank {rank} of {nproc_per_node} {exit_reason(failure.exitcode)}; torchrun "
                               f"stopped the other ranks and nothing was written (its own error is above)") from None


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
