"""Process-group setup for every launcher: none (one process), torchrun, and MPI launchers.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT itself. MPI launchers (`mpirun`, `srun`,
`horovodrun`) set only their own rank variables, so rank 0 picks a free port, the address and port are
broadcast with mpi4py, and torch.distributed takes over from there (gloo on CPU, NCCL on GPU). Every
collective has a timeout, so a rank that dies makes the others fail with a clear error instead of hanging.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# (rank, world size, local rank) variables of the launchers we know, in order of preference.
_MPI_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI, horovodrun
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH, Intel MPI
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),  # srun
)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _mpi_ranks() -> tuple[int, int, int] | None:
    for rank, size, local in _MPI_VARIABLES:
        if rank in os.environ and size in os.environ:
            return int(os.environ[rank]), int(os.environ[size]), int(os.environ.get(local, "0"))
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mpi_rendezvous(rank: int) -> None:
    """Agree on MASTER_ADDR/MASTER_PORT through MPI (rank 0 chooses, everyone receives)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("an MPI launcher started this process but mpi4py is not installed "
                           "(pip install mpi4py; it needs an MPI library such as Debian's openmpi)") from None
    comm = MPI.COMM_WORLD
    address = None
    if rank == 0:
        host = os.environ.get("MASTER_ADDR") or (socket.gethostname() if comm.Get_size() > 1 else "127.0.0.1")
        address = (host, int(os.environ.get("MASTER_PORT") or _free_port()))
    host, port = comm.bcast(address, root=0)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, str(port)


def init_distributed(launcher: str = "auto", timeout_s: float = 300.0) -> DistEnv:
    """Join the process group the launcher describes; a single process needs no group at all.

    `launcher`: "auto" (torchrun variables, then MPI variables, else one process), "torchrun", "mpi" or
    "none". `timeout_s` bounds every collective: a peer that died surfaces as an error after that long.
    """
    if launcher not in ("auto", "torchrun", "mpi", "none"):
        raise ValueError(f"unknown launcher {launcher!r}; expected auto, torchrun, mpi or none")
    found = None
    if launcher in ("auto", "torchrun") and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        found = ("torchrun", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", "0")))
    elif launcher in ("auto", "mpi"):
        ranks = _mpi_ranks()
        if ranks is not None:
            found = ("mpi", *ranks)
        elif launcher == "mpi":
            raise RuntimeError("--launcher mpi but no MPI rank variables are set (OMPI_COMM_WORLD_RANK, PMI_RANK, "
                               "SLURM_PROCID …): start this script with mpirun, srun or horovodrun")
    elif launcher == "torchrun":
        raise RuntimeError("--launcher torchrun but RANK/WORLD_SIZE are not set: start with torchrun")
    if found is None or found[2] == 1:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistEnv(device=device, launcher=found[0] if found else "none")
    kind, rank, world, local = found
    if kind == "mpi":
        _mpi_rendezvous(rank)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > local
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    logger.info("rank %d of %d (%s, %s)", rank, world, kind, device)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device, launcher=kind)


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks (a no-op for one process)."""
    if env.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
