"""A training run on disk: settings, JSONL logs, verified HF-layout checkpoints, and the files of exact resume. This
module writes and reads the files, atomically; what a resume needs is rlsr/training.py's `Trainer.state_dict()`.

    RUN_DIR/
      .lock                         held by the process writing the run (rlsr/lock.py); another one is refused
      settings.json                 the run's settings (argparse values, and data_sha256), written once the run has
                                    started
      metrics.jsonl                 one record per step ({"step": ..., ...}); strict JSON (null for NaN / inf)
      samples.jsonl, eval.jsonl     other per-step records (same "step" key)
      checkpoints/step-000040/      HF layout (config.json, model.safetensors, tokenizer files) that
                                    Transformer.from_pretrained / transformers load directly, plus
                                    trainer_state.pt (Trainer.state_dict(): optimizer, scheduler, step, RNG states,
                                    data position, compute; tensors and plain Python values only, loaded with
                                    torch.load(weights_only=True), so a crafted file cannot run code), compute.json,
                                    settings.json, and manifest.json
                                    (size and sha256 of every file)
      checkpoints/LATEST            name of the newest complete checkpoint
      final/                        the last weights, HF layout (+ compute.json, manifest.json)
      adapters/                     a LoRA run's final adapters in PEFT's layout, with --save-adapters

A LoRA run's checkpoints hold its adapters in PEFT's layout (adapter_config.json, adapter_model.safetensors) in
place of the weights; its final/ holds the merged weights (rlsr/lora.py).

A checkpoint directory appears only when complete (written under a temporary name, then renamed), and LATEST is
replaced atomically after it, so a run killed at any instant resumes from a complete checkpoint. On resume the
newest checkpoint whose files match their manifest is used (an older one, said so, if the newest is damaged), the
log lines written after it are dropped (the resumed run writes them again), and temporaries of a killed write are
removed. A checkpoint holds the weights and twice as many bytes of AdamW state: about 3x the weights in fp32
(1.6 GB for the default 135M-parameter policy); free space is checked before each one is written.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import torch

from rlsr import distributed
from rlsr.checkpoint import (apply_umask, atomic_dir, remove_stale_temporaries, verify_manifest, write_json,
                             write_manifest)
from rlsr.lock import LOCK_FILE, lock_dir


class CheckpointError(RuntimeError):
    pass


def _finite_or_none(x):
    """JSON has no NaN or inf: they are written as null (the key stays, so a reader sees the step had one)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def nbytes(obj) -> int:
    """Bytes of every tensor in a nested dict / list."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def read_log_lines(path: Path, say=None) -> list[tuple[str, dict]]:
    """(line, record) of each whole record of a JSONL log. A last line that does not parse as a JSON object was cut
    by a killed write: it is skipped (and `say` is told). A bad line elsewhere is damage, named with its number."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").split("\n")
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if any(rest.strip() for rest in lines[n:]):
                raise CheckpointError(f"{path}:{n}: not a JSON record ({e}); the log is damaged") from None
            if say:
                say(f"{path}:{n}: dropped a last line cut by a killed write ({len(line)} characters)")
            continue
        out.append((line, record))
    return out


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def space_shortage(folder: Path, need: int, what: str, always: bool = False) -> str | None:
    """The message for a disk without `need` bytes (and 5% to spare) free at `folder` (or the nearest existing folder
    above it) for `what`; None when they are free (unless `always`)."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free >= need * 1.05 and not always:
        return None
    return (f"no space left on {mount_point(folder)} for {what}: it needs about {need / 1e9:.2f} GB and "
            f"{free / 1e9:.2f} GB are free")


class Run:
    """A run directory. `Run.create` makes a new one (call it once every input has been checked); `Run.open`
    reopens one to resume. writer=False on data-parallel ranks other than 0, which neither create nor write."""

    def __init__(self, path: str | Path, settings: dict, writer: bool = True, keep_checkpoints: int = 2):
        self.path = Path(path)
        self.settings = settings
        self.writer = writer
        self.keep_checkpoints = keep_checkpoints
        self.ckpt_dir = self.path / "checkpoints"

    @staticmethod
    def check_new(path: str | Path):
        """Refuse a directory that already holds something (before any work starts)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(p.name != LOCK_FILE for p in path.iterdir())):
            raise FileExistsError(f"{path} exists and is not empty; pass --resume {path} to continue it or choose "
                                  "another --out-dir")

    @classmethod
    def create(cls, path: str | Path, settings: dict, writer: bool = True) -> "Run":
        """A new run directory, locked for this process's life (rlsr/lock.py): of two runs started on one --out-dir,
        one proceeds and the other is refused."""
        run = cls(path, settings, writer)
        if writer:
            cls.check_new(path)
            lock_dir(run.path)
            cls.check_new(path)  # again under the lock: another run may have started between the two
            write_json(run.path / "settings.json", settings)
        return run

    @staticmethod
    def read_settings(path: str | Path) -> dict:
        p = Path(path) / "settings.json"
        if not p.exists():
            raise FileNotFoundError(f"{path}: not a run directory (no settings.json)")
        try:
            settings = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(settings, dict):
            raise ValueError(f"{p}: expected a JSON object of the run's settings, got {type(settings).__name__}")
        return settings

    @classmethod
    def open(cls, path: str | Path, settings: dict, writer: bool = True) -> "Run":
        run = cls(path, settings, writer)
        if writer:
            lock_dir(run.path)  # before anything is touched: another process may be writing this run
            for d in (run.path, run.ckpt_dir):
                for p in remove_stale_temporaries(d):
                    print(f"removed {p}, left by a write that was killed")
        return run

    # ---- logs
    def log(self, record: dict, file: str = "metrics.jsonl"):
        """Append one record as one line. The line goes out in one write() on an O_APPEND descriptor, and a write
        that fails or is cut short (a full disk) is cut back off the file, so every line a log holds is whole; a
        line cut by a kill -9 in the middle of a write is the last one, and readers skip it (`read_log_lines`)."""
        if not self.writer:
            return
        data = (json.dumps(_finite_or_none(record), ensure_ascii=False, allow_nan=False) + "\n").encode()
        fd = os.open(self.path / file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, f"{self.path / file}: short write (no space left?)")
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def read_log(self, file: str = "metrics.jsonl") -> list[dict]:
        return [record for _, record in read_log_lines(self.path / file)]

    def truncate_logs(self, step: int):
        """Drop records of steps after `step` (written by a killed run after its last checkpoint), a last line that a
        killed write cut (said so), and summary.jsonl's closing line (the resumed run writes its own)."""
        if not self.writer:
            return
        for p in self.path.glob("*.jsonl"):
            last = -1 if p.name == "summary.jsonl" else step
            kept = [line for line, record in read_log_lines(p, say=print) if record.get("step", -1) <= last]
            tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, p)

    # ---- checkpoints
    def _write_dir(self, target: Path, need: int, write):
        """Write a checkpoint-like directory atomically with a manifest, after checking the free space."""
        message = space_shortage(target.parent, need, target.name)
        if message:
            raise CheckpointError(message + self._resume_hint())
        try:
            with atomic_dir(target) as tmp:
                write(tmp)
                write_manifest(tmp)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or shutil.disk_usage(target.parent).free < need:
                raise CheckpointError(space_shortage(target.parent, need, target.name, always=True)
                                      + self._resume_hint()) from None
            raise

    def _resume_hint(self) -> str:
        last = self.latest_checkpoint()
        return f"; free some space and `--resume {self.path}` continues from {last.name}" if last else ""

    def save_checkpoint(self, step: int, model, tokenizer, trainer_state: dict, state_dict: dict,
                        extra_json: dict[str, dict] | None = None) -> Path:
        """Every rank calls it with the gathered state (FSDP); the writer rank writes. Returns the directory."""
        name = f"step-{step:06d}"
        if not self.writer:
            return self.ckpt_dir / name
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        def write(tmp):
            save_model(tmp, model, tokenizer, self.settings, state_dict, extra_json)
            torch.save(trainer_state, tmp / "trainer_state.pt")
        self._write_dir(self.ckpt_dir / name, nbytes(state_dict) + nbytes(trainer_state), write)
        latest = self.ckpt_dir / "LATEST"
        tmp_latest = latest.with_name(f".LATEST.tmp-{os.getpid()}")
        tmp_latest.write_text(name + "\n")
        os.replace(tmp_latest, latest)
        apply_umask(latest)
        older = sorted(p for p in self.ckpt_dir.glob("step-*") if p.name != name)
        for old in older[:max(0, len(older) - (self.keep_checkpoints - 1))]:
            shutil.rmtree(old)
        return self.ckpt_dir / name

    def save_final(self, model, tokenizer, state_dict: dict, extra_json: dict[str, dict] | None = None,
                   name: str = "final") -> Path:
        """The last weights in HF layout at RUN_DIR/final (every rank calls it, like save_checkpoint); `name`: another
        directory of the run (a LoRA run's adapters)."""
        if self.writer:
            self._write_dir(self.path / name, nbytes(state_dict),
                            lambda tmp: save_model(tmp, model, tokenizer, self.settings, state_dict, extra_json))
        return self.path / name

    def latest_checkpoint(self) -> Path | None:
        latest = self.ckpt_dir / "LATEST"
        return self.ckpt_dir / latest.read_text().strip() if latest.exists() else None

    def intact_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files match their manifest (saying so when a newer one is damaged)."""
        for ckpt in sorted(self.ckpt_dir.glob("step-*"), reverse=True):
            problem = verify_manifest(ckpt)
            if problem is None:
                return ckpt
            print(f"checkpoint {ckpt.name} is damaged ({problem}); trying an older one")
        return None

    def read_state(self, ckpt: Path | None) -> dict | None:
        """A checkpoint's trainer state (None for a new run), the log lines after it dropped (the resumed run writes
        them again). Tensors and plain values only: anything else is refused, never unpickled."""
        if ckpt is None:
            self.truncate_logs(0)
            return None
        try:
            state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{ckpt / 'trainer_state.pt'} holds more than tensors and plain values; refusing "
                                  f"to load it ({str(e).splitlines()[0]})") from None
        self.truncate_logs(state["step"])
        if self.writer:
            print(f"resumed {self.path} from {ckpt.name} (step {state['step']}), training to step "
                  f"{self.settings.get('steps')}")
        return state


def save_model(path: Path, model, tokenizer, settings: dict | None = None, state_dict=None,
               extra_json: dict[str, dict] | None = None):
    """HF layout: weights + config.json + tokenizer files (+ the run's settings): a valid --init for the scripts.
    `model` is anything with save_pretrained(path, state_dict=...): a Transformer, or rlsr/lora.py's PeftAdapters."""
    distributed.unwrap(model).save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    # every stop id, so generation elsewhere (transformers, vLLM) stops where rlsr's sampler did
    write_json(path / "generation_config.json", {"eos_token_id": sorted(tokenizer.stop_ids), "pad_token_id": tokenizer.pad_id,
                                                 **({"bos_token_id": tokenizer.bos_id} if tokenizer.bos_id is not None else {})})
    if settings is not None:
        write_json(path / "settings.json", settings)
    for name, obj in (extra_json or {}).items():
        write_json(path / name, obj)
