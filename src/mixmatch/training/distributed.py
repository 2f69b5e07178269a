"""Several processes under `torchrun`, one per device, each with a share of the global batch.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (a plain `mixmatch train`) everything here
is a no-op on one process, so the trainer calls these helpers unconditionally.

BatchNorm: by default each process normalises with the statistics of its own share of the batch, as
the official code does on several GPUs (it splits every batch over the GPUs). The running statistics
are then averaged over the processes after every step, so the model's buffers, and with them the EMA
model, stay identical on every process. `--sync-bn` (CUDA only) normalises with statistics of the
whole global batch instead.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> ProcessGroup:
        """This process's place in a torchrun launch, or the single process of a plain run."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files and prints."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: plain 'cuda' becomes this process's cuda:LOCAL_RANK (cuda:0 without torchrun)."""
        if device.type == "cuda" and device.index is None:
            # torch.cuda.set_device refuses a device without an index.
            device = torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> bool:
        """Join the process group (NCCL on GPUs, gloo on CPUs); True if this call created it."""
        if not self.enabled or dist.is_initialized():
            return False
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return True

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model behind DistributedDataParallel, which averages gradients over processes in backward."""
        if not self.enabled:
            return model
        # Buffers are averaged after each step (average_buffers), so DDP need not broadcast rank 0's
        # before every forward pass; the keyword was renamed in recent PyTorch.
        params = inspect.signature(DistributedDataParallel).parameters
        no_broadcast = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        return DistributedDataParallel(model, **no_broadcast)

    def average(self, tensor: Tensor) -> Tensor:
        """Mean of `tensor` over processes (in place), without a host sync."""
        if self.enabled:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def average_buffers(self, model: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) over processes."""
        if not self.enabled:
            return
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        flat = torch.cat([b.flatten() for b in buffers])
        self.average(flat)
        averaged = flat.split([b.numel() for b in buffers])
        torch._foreach_copy_(buffers, [v.view_as(b) for v, b in zip(averaged, buffers, strict=True)])

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every process, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        objects: list[Any] = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def max_int(self, value: int, device: torch.device) -> int:
        """The largest `value` over processes (a host sync)."""
        if not self.enabled:
            return value
        tensor = torch.tensor(value, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())


def stop(finished: bool = False) -> None:
    """Leave the process group (after a run that started it).

    finished: every process ended the run normally, so they can meet first. Without that meeting, a process that
    tears its gloo connections down while another still reads from them can abort the other one (SIGABRT); after
    an error on some processes only, the others would never come to it, so they leave at once.
    """
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
