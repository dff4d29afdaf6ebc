"""Process groups for torchrun: which rank this is, and the few collectives the loop needs.

Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); runs single-process when absent.
NCCL on CUDA, gloo on CPU. Data sharding lives in data.py (each rank takes its slice of every
global batch), so the data order never depends on the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place on a copy)."""
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's rows in rank order (every rank gets the result)."""
        if not self.enabled:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: str | None = None) -> Dist:
    """Initialise the process group if launched by torchrun; choose the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, device=dev)


def describe_hardware(d: Dist) -> str:
    """What a run trains on, for run.json and the model card: "2 x NVIDIA H200", "1 x CPU (...)"."""
    if d.device.type == "cuda":
        name = torch.cuda.get_device_name(d.device)
    else:
        import platform

        name = (
            f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        )
    return f"{d.world_size} x {name}"


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """The command line that runs `pico-train ARGS` in `nproc` processes on this host (torchrun,
    on a free local port); a plain single process when nproc is 1."""
    import socket
    import sys

    if nproc == 1:
        return [sys.executable, "-m", "pico_train.cli", *args]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "pico_train.cli",
        *args,
    ]
