"""A training run on disk: settings, JSONL logs, atomic HF-layout checkpoints, and exact resume.

    RUN_DIR/
      settings.json                 the run's settings (argparse values), written once
      metrics.jsonl                 one record per step ({"step": ..., ...})
      samples.jsonl, eval.jsonl     other per-step records (same "step" key)
      checkpoints/step-000040/      HF layout (config.json, model.safetensors, tokenizer files) that
                                    Transformer.from_pretrained / transformers load directly, plus
                                    trainer_state.pt (optimizer, scheduler, step, RNG states, data position)
                                    and settings.json
      checkpoints/LATEST            name of the newest complete checkpoint
      final/                        the last weights, HF layout

A checkpoint directory appears only when complete (written under a temporary name, then renamed), and LATEST is
replaced atomically after it, so a run killed at any instant resumes from a complete checkpoint. On resume the log
lines written after that checkpoint are dropped: the resumed run writes them again.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from rlsr import distributed
from rlsr.checkpoint import atomic_dir, write_json


def rng_state(*generators: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [g.get_state() for g in generators]}


def set_rng_state(state: dict, *generators: torch.Generator):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)


def adamw_with_warmup(params, lr: float, weight_decay: float, warmup_steps: int, fused: bool = True):
    """AdamW (betas 0.9/0.99; fused: one kernel for all parameters, 5x faster than the default on a 2-core CPU)
    with a linear warm-up over `warmup_steps` optimizer steps, then a constant learning rate."""
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay, fused=fused)
    warmup = max(warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / (warmup + 1)))
    return optimizer, scheduler


def open_run(args: argparse.Namespace, argv: list[str] | None = None, writer: bool = True
             ) -> tuple["Run", argparse.Namespace]:
    """A new run in args.out_dir, or with --resume the existing run and ITS settings (a given --steps still wins).

    writer: False on data-parallel ranks other than 0, which neither create nor write anything.
    """
    if not args.resume:
        return Run(args.out_dir, vars(args), writer=writer), args
    run = Run(args.resume, {}, resume=True, writer=writer)
    explicit_steps = any(a.startswith("--steps") for a in (sys.argv[1:] if argv is None else argv))
    resumed = argparse.Namespace(**{**run.settings, "resume": args.resume})
    if explicit_steps:
        resumed.steps = args.steps
    return run, resumed


class Run:
    def __init__(self, path: str | Path, settings: dict, resume: bool = False, keep_checkpoints: int = 2,
                 writer: bool = True):
        self.path = Path(path)
        self.keep = keep_checkpoints
        self.ckpt_dir = self.path / "checkpoints"
        self.writer = writer
        if not writer:
            self.settings = json.loads((self.path / "settings.json").read_text()) if resume else settings
        elif resume:
            if not (self.path / "settings.json").exists():
                raise FileNotFoundError(f"{self.path}: not a run directory (no settings.json)")
            self.settings = json.loads((self.path / "settings.json").read_text())
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise FileExistsError(f"{self.path} exists and is not empty; pass --resume {self.path} to continue it "
                                      "or choose another --out-dir")
            self.path.mkdir(parents=True, exist_ok=True)
            self.settings = settings
            write_json(self.path / "settings.json", settings)

    def log(self, record: dict, file: str = "metrics.jsonl"):
        if not self.writer:
            return
        with open(self.path / file, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()

    def read_log(self, file: str = "metrics.jsonl") -> list[dict]:
        p = self.path / file
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

    def truncate_logs(self, step: int):
        """Drop records of steps after `step` (written by a killed run after its last checkpoint)."""
        if not self.writer:
            return
        for p in self.path.glob("*.jsonl"):
            lines = [line for line in p.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line).get("step", -1) <= step]
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, p)

    def save_checkpoint(self, step: int, model, tokenizer, trainer_state: dict, state_dict=None) -> Path:
        """state_dict: the full weights when `model` holds only a shard (FSDP); written by the writer rank only."""
        name = f"step-{step:06d}"
        if not self.writer:
            return self.ckpt_dir / name
        with atomic_dir(self.ckpt_dir / name) as tmp:
            save_model(tmp, model, tokenizer, self.settings, state_dict)
            torch.save(trainer_state, tmp / "trainer_state.pt")
        latest = self.ckpt_dir / "LATEST"
        tmp_latest = latest.with_name(".LATEST.tmp")
        tmp_latest.write_text(name + "\n")
        os.replace(tmp_latest, latest)
        older = sorted(p for p in self.ckpt_dir.glob("step-*") if p.name != name)
        for old in older[:max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old)
        return self.ckpt_dir / name

    def latest_checkpoint(self) -> Path | None:
        latest = self.ckpt_dir / "LATEST"
        return self.ckpt_dir / latest.read_text().strip() if latest.exists() else None

    def checkpoint(self, step: int, model, policy, tokenizer, optimizer, scheduler, sampler, d,
                   *generators: torch.Generator):
        """Every rank calls this (gathering FSDP shards is collective); the writer rank writes.
        model: what trains (DDP / FSDP2 / the policy itself); policy: the underlying Transformer."""
        state = {"step": step, "optimizer": distributed.full_optimizer_state(model, optimizer, d),
                 "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": rng_state(*generators)}
        self.save_checkpoint(step, policy, tokenizer, state, distributed.full_state_dict(model, d))

    def save_final(self, model, policy, tokenizer, d):
        """The last weights in HF layout at RUN_DIR/final (collective, like `checkpoint`)."""
        weights = distributed.full_state_dict(model, d)
        if self.writer:
            with atomic_dir(self.path / "final") as tmp:
                save_model(tmp, policy, tokenizer, self.settings, weights)

    def restore(self, ckpt: Path | None, load_optimizer, scheduler, sampler, *generators: torch.Generator) -> int:
        """Load a checkpoint's trainer state (the weights are loaded from `ckpt` by the caller); drop later logs.

        load_optimizer: a callable taking the saved optimizer state. Returns the step to continue after (0 when there
        is no checkpoint yet).
        """
        if ckpt is None:
            self.truncate_logs(0)
            return 0
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        load_optimizer(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"], *generators)
        self.truncate_logs(state["step"])
        print(f"resumed {self.path} from {ckpt.name} (step {state['step']})")
        return state["step"]


def save_model(path: Path, model, tokenizer, settings: dict | None = None, state_dict=None):
    """HF layout: weights + config.json + tokenizer files (+ the run's settings): a valid --init for the scripts."""
    raw = getattr(model, "module", model)  # unwrap DDP
    raw.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    # every stop id, so generation elsewhere (transformers, vLLM) stops where rlsr's sampler did
    write_json(path / "generation_config.json", {"eos_token_id": sorted(tokenizer.stop_ids), "pad_token_id": tokenizer.pad_id,
                                                 **({"bos_token_id": tokenizer.bos_id} if tokenizer.bos_id is not None else {})})
    if settings is not None:
        write_json(path / "settings.json", settings)
