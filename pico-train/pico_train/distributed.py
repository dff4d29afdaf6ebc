"""Process groups for torchrun: which rank this is, and the few collectives the loop needs.

Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); runs single-process when absent.
NCCL on CUDA, gloo on CPU. Data sharding lives in data.py (each rank takes its slice of every
global batch), so the data order never depends on the number of processes.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pico_train.config import ConfigError


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


def setup(device: str | None = None, timeout_s: float = 300.0) -> Dist:
    """Initialise the process group if launched by torchrun; choose the device.

    timeout_s bounds every collective: a rank whose peers stopped answering raises (gloo) or is
    aborted by the NCCL watchdog after that long instead of waiting forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        # One GPU per process: every rank of an over-full host refuses before anything is
        # written (a rank that went on would create the run directory, then wait for the rest).
        visible = torch.cuda.device_count()
        per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), local + 1)
        if per_node > visible:
            raise ConfigError(
                f"torchrun started {per_node} processes on this machine, but it has {visible} "
                f"GPU(s) visible, one per process: start at most {visible} "
                f"(--nproc_per_node={visible}), or train on the CPU with --device cpu."
            )
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
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


def stop_on_error(err: BaseException, same_on_every_rank: tuple[type, ...] = ()) -> None:
    """Under several processes: print this rank's error once and end the process now.

    Returns (so the caller re-raises) when there is one process. Otherwise it never returns:
    waiting for the process group to shut down cleanly can block forever while a peer sits in a
    collective (this was the silent capture hang), so the process exits at once (torchrun then
    stops the other ranks). Errors of the `same_on_every_rank` types (a bad config, run or data
    that every rank sees alike) are printed by rank 0 only; a collective broken because a peer
    died or timed out gets one line pointing at that peer's error; any other error is printed
    by the rank it happened on, with its traceback.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    rank = dist.get_rank()
    code = 1
    if isinstance(err, KeyboardInterrupt):
        message, code = "", 130
    elif isinstance(err, same_on_every_rank):
        message, code = (f"error: {err}" if rank == 0 else ""), 2
    elif _lost_peer(err):
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        message = (
            f"rank {rank} stopped: a collective failed ({first}); see the failing rank's error."
        )
    else:
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        message = f"{trace}(the error above happened on rank {rank}; every rank stops)"
    if message:
        print(message, file=sys.stderr, flush=True)
    end_worker(code)


def end_worker(code: int = 0) -> None:
    """End a torchrun worker now: flush the standard streams and exit without the interpreter's
    finalization, where gloo's worker threads can still hold tensors whose release then aborts
    the process (SIGABRT, "terminate called without an active exception": seen once in CI, a
    rank of a finished two-rank gloo run). Call it only once the process group is torn down or
    broken and every file is closed."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _lost_peer(err: BaseException) -> bool:
    """A collective that failed because another rank exited or stopped answering."""
    kinds = tuple(
        getattr(dist, n) for n in ("DistBackendError", "DistNetworkError") if hasattr(dist, n)
    )
    text = str(err).lower()
    signs = ("closed by peer", "reset by peer", "timed out", "timeout", "broken pipe")
    return isinstance(err, kinds) or (
        isinstance(err, RuntimeError) and any(s in text for s in signs)
    )


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """The command line that runs `pico-train ARGS` in `nproc` processes on this host (torchrun,
    on a free local port); a plain single process when nproc is 1."""
    import socket

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
