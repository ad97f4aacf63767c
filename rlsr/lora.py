"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685): train r x (in + out) numbers per projection instead of
in x out, with the base weights frozen.

    train_rlsr.py --lora-rank 16 --lr 5e-4            # every attention and MLP projection of every block
    train_rlsr.py --lora-rank 16 --lora-targets q_proj,v_proj --save-adapters

A targeted nn.Linear y = x W^T + b becomes y = x W^T + b + s * dropout(x) A^T B^T with A [r, in], B [out, r] and
s = alpha / r. A and B are fp32 whatever the base's dtype (`--dtype bfloat16`: a bf16 frozen base, fp32 adapters and
AdamW state). A starts as nn.Linear's (and PEFT's) Kaiming-uniform draw, B at zero, so at initialisation the policy
computes exactly what the base model computes. The adapted modules keep their names and their weight and bias
(`model.layers.0.self_attn.q_proj.weight`); the adapters are their children `lora_A` and `lora_B`, the names PEFT
gives them (`...q_proj.lora_A.weight`), so the policy's state dict is the base's plus the adapters'.

What a LoRA run does differently (rlsr/training.py and the scripts call this module; nothing else changes):
- only the adapters require gradients, so the optimizer (AdamW over the trainable parameters) holds state for them
  alone, and DDP / FSDP2 reduce only their gradients;
- the KL model of train_rlsr.py is the policy itself with the adapters switched off (`AdaptersOff`: no second copy
  of the weights), unless --kl-model names another checkpoint;
- checkpoints hold the adapters in PEFT's layout (adapter_config.json + adapter_model.safetensors, megabytes) beside
  trainer_state.pt (their AdamW state); a resume loads --init's weights and the checkpoint's adapters;
- final/ holds the merged weights W + s * B A in plain HF layout, so every tool that opens a checkpoint opens it;
  --save-adapters also writes the final adapters, PEFT's layout, to RUN_DIR/adapters (`PeftModel.from_pretrained`
  on the base model loads them).

Defaults, ours (the paper trains all weights): every Linear of the decoder blocks (PEFT's "all-linear": attention
and MLP projections, not the embedding or the head), because adapting the MLPs too is what lets LoRA match full
fine-tuning in RL ("LoRA Without Regret", Schulman et al. 2025); alpha 32 at every rank, as there, so that with
s = alpha / r the best learning rate hardly moves with r (about 10x the full fine-tuning one); dropout 0, because
the PPO ratio and the KL compare the policy with itself: dropout in the update's forward would make the ratio of an
unchanged policy differ from 1. Dropout > 0 applies in training forwards only (model.train() with gradients), never
in sampling, log-prob passes without gradient or evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlsr.cpu_matmul import few_row_linear

ALL_LINEAR = "all-linear"
PEFT_PREFIX = "base_model.model."        # PEFT's key of a module is this + its path in the HF model
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class LoRAConfig:
    rank: int                      # r
    alpha: float = 32.0            # s = alpha / r
    dropout: float = 0.0           # on the adapters' input, training forwards only
    targets: str = ALL_LINEAR      # "all-linear", or Linear module names: "q_proj,v_proj"

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LoRAConfig | None":
        """The flags' adapters, None without --lora-rank; ValueError naming the flag when one is out of range."""
        rank = getattr(args, "lora_rank", 0) or 0
        if not rank:
            for flag in ("lora_alpha", "lora_dropout", "lora_targets", "save_adapters"):
                if getattr(args, flag, None) not in (None, False):
                    raise ValueError(f"--{flag.replace('_', '-')} given without --lora-rank")
            return None
        alpha = 32.0 if args.lora_alpha is None else args.lora_alpha
        dropout = args.lora_dropout or 0.0
        if rank < 0:
            raise ValueError(f"--lora-rank {rank} must be >= 1")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"--lora-alpha {alpha} must be a finite number > 0")
        if not 0 <= dropout < 1:
            raise ValueError(f"--lora-dropout {dropout} must be in [0, 1)")
        return cls(rank, alpha, dropout, args.lora_targets or ALL_LINEAR)


def add_lora_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("LoRA (rlsr/lora.py): frozen base weights, trained low-rank adapters")
    g.add_argument("--lora-rank", type=int, default=0, metavar="R", help="adapter rank (default 0: train every weight)")
    g.add_argument("--lora-alpha", type=float, metavar="A", help="adapter scale alpha / R (default alpha 32)")
    g.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input in training "
                   "forwards (default 0: the PPO ratio of an unchanged policy stays 1)")
    g.add_argument("--lora-targets", metavar="NAMES", help="Linear modules to adapt, by name, e.g. q_proj,v_proj "
                   "(default all-linear: every attention and MLP projection of every block)")
    g.add_argument("--save-adapters", action="store_true", help="also write the final adapters in PEFT's layout to "
                   "RUN_DIR/adapters (final/ holds the merged weights either way)")


# ---------------------------------------------------------------- the adapted layer


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank update: x W^T + b + s * (drop(x) A^T) B^T; the same weight and bias Parameters
    as the Linear it replaces (frozen), and trainable children lora_A [r, in], lora_B [out, r]."""

    def __init__(self, base: nn.Linear, cfg: LoRAConfig, generator: torch.Generator):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        # fp32 adapters (and so fp32 AdamW state) over a bf16 base: updates of lr x ~1 would vanish in bf16 rounding
        kw = dict(bias=False, dtype=torch.promote_types(base.weight.dtype, torch.float32))
        with torch.device("meta"):  # allocated below, so nn.Linear's own init draws nothing from the global RNG
            self.lora_A = nn.Linear(self.in_features, cfg.rank, **kw)
            self.lora_B = nn.Linear(cfg.rank, self.out_features, **kw)
        self.lora_A.to_empty(device=base.weight.device)
        self.lora_B.to_empty(device=base.weight.device)
        a = torch.empty(self.lora_A.weight.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)   # nn.Linear's and PEFT's init
        with torch.no_grad():
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()                                     # B = 0: the base model at init
        self.scaling, self.dropout = cfg.scaling, cfg.dropout
        self.adapters_on = True    # off: the base layer (`disabled`)
        self.few_rows = False      # the decoding speed path of rlsr/cpu_matmul.py for the base product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.few_rows:
            y = few_row_linear(x, self.weight, self.bias)                  # [..., out]
        else:
            y = F.linear(x, self.weight, self.bias)                        # [..., out]
        if not self.adapters_on:
            return y
        if self.dropout and self.training and torch.is_grad_enabled():
            x = F.dropout(x, self.dropout, training=True)
        delta = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling  # [..., out]
        return y + delta.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.out_features}, scaling={self.scaling:g}"


def targets_of(model: nn.Module, targets: str) -> list[str]:
    """Paths of the Linear modules `targets` names inside the decoder blocks (model.model.layers); a name that
    matches none is an error listing those there are."""
    linears = {name: m for name, m in model.model.layers.named_modules() if isinstance(m, nn.Linear)}
    names = sorted({name.rsplit(".", 1)[-1] for name in linears})
    if targets == ALL_LINEAR:
        wanted = set(names)
    else:
        wanted = {t.strip() for t in targets.split(",") if t.strip()}
        unknown = sorted(wanted - set(names))
        if unknown or not wanted:
            raise ValueError(f"--lora-targets {targets!r}: {', '.join(unknown) or 'no name'} is not a Linear module "
                             f"of the decoder blocks; they are {', '.join(names)} (or {ALL_LINEAR})")
    return [f"model.layers.{name}" for name in linears if name.rsplit(".", 1)[-1] in wanted]


def apply(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> list[str]:
    """Freeze every weight of `model` and adapt the targeted Linear modules in place (before DDP / FSDP2 wrap it).
    The A matrices are drawn from their own generator seeded with `seed`, in module order, so every process (and a
    run with another world size) draws the same adapters. Returns the adapted modules' paths."""
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    paths = targets_of(model, cfg.targets)
    for path in paths:
        parent, _, name = path.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, name, LoRALinear(getattr(owner, name), cfg, generator))
    return paths


def adapted(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextmanager
def disabled(model: nn.Module):
    """The base model inside the block: every adapter of `model` switched off."""
    layers = adapted(model)
    for m in layers:
        m.adapters_on = False
    try:
        yield model
    finally:
        for m in layers:
            m.adapters_on = True


class AdaptersOff:
    """The policy with its adapters switched off, called like a model: the KL model of a LoRA run without a second
    copy of the weights. It lives wherever the policy lives (`to` moves nothing)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with disabled(self.model):
            return self.model(*args, **kwargs)

    def to(self, *args, **kwargs) -> "AdaptersOff":
        return self


# ---------------------------------------------------------------- state dicts: adapters, merged weights, PEFT files


def is_adapter(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def adapter_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by their name in the policy, whole and on the CPU. Under FSDP2 each is gathered from
    its shards: every rank must call it."""
    out = {}
    for name, p in model.named_parameters():
        if is_adapter(name):
            t = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
            out[name] = t.cpu().clone()
    return out


def merged(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A LoRA policy's full state dict -> the plain model's: W + scaling * B @ A for every adapted weight (computed
    in fp32, stored in W's dtype), the adapters dropped."""
    out = {k: v for k, v in state_dict.items() if not is_adapter(k)}
    for key in state_dict:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            a, b = state_dict[key].float(), state_dict[f"{module}.lora_B.weight"].float()  # [r, in], [out, r]
            w = out[f"{module}.weight"]                                                      # [out, in]
            out[f"{module}.weight"] = (w.float() + scaling * (b @ a)).to(w.dtype)
    return out


class PeftAdapters:
    """Writes adapters in PEFT's layout; it stands where a model's `save_pretrained(path, state_dict=...)` is called
    (rlsr/run.py writes checkpoints and final/ through it).

        adapter_config.json         peft_type LORA, r, lora_alpha, lora_dropout, target_modules, the base model
        adapter_model.safetensors   base_model.model.<module path>.lora_A.weight [r, in], ...lora_B.weight [out, r]
    """

    def __init__(self, model: nn.Module, cfg: LoRAConfig, base: str | Path):
        self.cfg, self.base = cfg, str(base)
        self.target_modules = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                                      if isinstance(m, LoRALinear)})

    def config(self) -> dict:
        alpha = int(self.cfg.alpha) if float(self.cfg.alpha).is_integer() else self.cfg.alpha
        return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": self.base,
                "r": self.cfg.rank, "lora_alpha": alpha, "lora_dropout": self.cfg.dropout,
                "target_modules": self.target_modules, "bias": "none", "fan_in_fan_out": False,
                "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
                "inference_mode": True}

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor]):
        from safetensors.torch import save_file
        from rlsr.checkpoint import write_json
        path = Path(path)
        tensors = {PEFT_PREFIX + k: v.contiguous() for k, v in state_dict.items() if is_adapter(k)}
        save_file(tensors, path / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        write_json(path / ADAPTER_CONFIG, self.config())


def load_adapters(model: nn.Module, path: str | Path, cfg: LoRAConfig):
    """Copy the adapters a PEFT-layout directory holds (a LoRA checkpoint) into `model`'s (already applied with
    `cfg`): the same rank, alpha and targets, every adapter present with its shape, or a ValueError naming the file."""
    from safetensors.torch import load_file
    path = Path(path)
    saved = json.loads((path / ADAPTER_CONFIG).read_text())
    for key, want in (("r", cfg.rank), ("lora_alpha", cfg.alpha)):
        if saved.get(key) != want:
            raise ValueError(f"{path / ADAPTER_CONFIG}: {key} {saved.get(key)} but the run's is {want}")
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(path / ADAPTER_WEIGHTS).items()}
    own = {k: p for k, p in model.named_parameters() if is_adapter(k)}
    if tensors.keys() != own.keys():
        missing, extra = sorted(own.keys() - tensors.keys()), sorted(tensors.keys() - own.keys())
        raise ValueError(f"{path / ADAPTER_WEIGHTS}: adapters differ from the run's: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    with torch.no_grad():
        for k, p in own.items():
            if tensors[k].shape != p.shape:
                raise ValueError(f"{path / ADAPTER_WEIGHTS}: {k} has shape {list(tensors[k].shape)}, the run's "
                                 f"{list(p.shape)}")
            p.copy_(tensors[k])


def describe(model: nn.Module, cfg: LoRAConfig) -> str:
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"LoRA rank {cfg.rank}, alpha {cfg.alpha:g} on {len(adapted(model))} modules "
            f"({cfg.targets}): {trained / 1e6:.2f}M trained parameters, {100 * trained / total:.2f}% of {total / 1e6:.1f}M")
