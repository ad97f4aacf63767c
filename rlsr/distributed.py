"""Data parallelism with PyTorch's own engine: torchrun + DDP, or FSDP2 (`fully_shard`) for models one device can't hold.

    torchrun --nproc_per_node=8 train_rlsr.py ...            # DDP: every rank holds the model, gradients all-reduced
    torchrun --nproc_per_node=8 train_rlsr.py --fsdp ...     # FSDP2: parameters, gradients, optimizer state sharded
    torchrun --nnodes=2 --node_rank=$RANK --nproc_per_node=8 \
             --rdzv_backend=c10d --rdzv_endpoint=$HOST:29500 train_rlsr.py ...   # several machines: torchrun's rendezvous

How the scripts split work: every rank draws the same global batch (same seed) and takes its contiguous share
(`shard`, `share`); a group of G samples never spans ranks. The few numbers per row that the algorithm needs over the
whole step (rewards, lengths) are gathered, so advantages and loss weights are computed for the whole step on every
rank and each takes its own rows; logged sums are all-reduced. A step on W ranks therefore computes the same update as
one process with the whole batch (tested with 2 CPU processes on gloo). DDP and FSDP2 average gradients over ranks while our losses are already shares of the global
loss, so each rank's loss is multiplied by W (`loss_scale`). Rank 0 writes logs and checkpoints; a checkpoint is the
full (gathered) state dict in HF layout, so `Transformer.from_pretrained` loads it on one process; resume needs the
same world size.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False  # FSDP2 instead of DDP (only meaningful with world > 1)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """DDP/FSDP divide the summed gradients by W; our losses are already shares of the global loss."""
        return float(self.world)

    def share(self, n: int) -> slice:
        """This rank's contiguous slice of n global items (n must split evenly)."""
        if n % self.world:
            raise ValueError(f"a global batch of {n} does not split evenly over {self.world} ranks")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)


def init(device: str, fsdp: bool = False) -> Dist:
    """Join the process group torchrun set up (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device(device), fsdp=fsdp)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev, fsdp)


def shard(items: list, d: Dist) -> list:
    """This rank's contiguous share of a global batch (its size must divide evenly)."""
    return items[d.share(len(items))]


def all_reduce(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Sum a dict of floats over ranks (float64, so the sums do not depend on rank order in fp32 rounding)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_reduce_max(value: int, d: Dist) -> int:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather(obj, d: Dist) -> list:
    """Every rank's object, in rank order."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def wrap(model, d: Dist):
    """DDP, or FSDP2 with one shard unit per transformer block (and the root for embeddings/head)."""
    if not d.enabled:
        return model
    if d.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def unwrap(model):
    return getattr(model, "module", model)


def full_state_dict(model, d: Dist) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (gathered from FSDP shards when sharded); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not d.enabled:
        return unwrap(model).state_dict()
    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer, d: Dist) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    if not d.enabled:
        return optimizer.state_dict()
    return get_optimizer_state_dict(unwrap(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict, d: Dist):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if not d.enabled:
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextmanager
def gradient_sync(model, d: Dist, sync: bool):
    """Gradient accumulation: reduce gradients over ranks only on the last micro-batch of a step (sync=True).
    Under FSDP2 every rank must run the same number of forwards (each all-gathers parameters): callers pad their
    micro-batch list to the same length on every rank."""
    if not d.enabled or sync:
        yield
    elif d.fsdp:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


@contextmanager
def full_weights(model, d: Dist):
    """FSDP2: keep every shard unit's parameters gathered for a while. Sampling and evaluation run a different number
    of forwards on each rank (answers end at different times), which per-forward all-gathers cannot follow. The
    model must then fit one device for the duration (FSDP2 here shards gradients and optimizer state for training)."""
    if not (d.enabled and d.fsdp):
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def barrier(d: Dist):
    if d.enabled:
        dist.barrier()


def close(d: Dist):
    """Tear down the process group once every rank is done with it. The barrier keeps a rank from closing its
    connections while a peer still has traffic for it (gloo then aborts the peer at exit)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
