"""Optional experiment trackers beside metrics.jsonl: Weights & Biases (offline) and TensorBoard.

    python train_rlsr.py --tensorboard                 # event files in RUN_DIR/tensorboard: tensorboard --logdir runs
    python train_rlsr.py --wandb my-project            # W&B offline run in RUN_DIR/wandb; upload it later with
                                                       # wandb sync RUN_DIR/wandb/offline-run-*

Each tracker gets the numbers of every record the run writes to its JSONL logs (the same keys; prefix "eval/" for
held-out records; lists, strings and nulls are left out) at the record's step, and the run's settings (W&B config;
TensorBoard hyper-parameters and a text summary). Neither package is a dependency: giving the flag without the
package is an error at start-up.

Resume continues the same tracker run. W&B: the run id is kept in RUN_DIR/wandb_id.txt and passed again. W&B's
offline mode does not resume a run in place: each start writes its own offline-run-*-<id> directory with that id, to
be synced in order (WANDB_MODE=online logs live instead, and then steps W&B already has are not sent again: rlsr's
resume is exact, so they hold the same numbers). TensorBoard: events of the steps after the checkpoint, written by
the killed run, are purged (SummaryWriter's purge_step), so the resumed run's records replace them; every record is
flushed as it is logged, so a kill loses nothing that a checkpoint covers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
from pathlib import Path

_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard"}  # flag -> the package it needs


class TrackerUnavailable(RuntimeError):
    pass


def _missing(flag: str) -> str | None:
    package = _PACKAGES[flag]
    if importlib.util.find_spec(package) is None:
        return (f"--{flag} needs the {package} package, which is not installed: pip install {package} "
                "(or pip install -r requirements-dev.txt)")
    return None


class _NeedsPackage(argparse.Action):
    """Stores the flag's value, after checking that its package is importable (a clear error before any work)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if (msg := _missing(self.dest)) is not None:
            parser.error(msg)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_tracker_args(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("trackers (optional; rlsr/tracking.py)")
    g.add_argument("--wandb", metavar="PROJECT", action=_NeedsPackage, default=None,
                   help="log to this W&B project, offline (no network; `wandb sync RUN_DIR/wandb/offline-run-*` "
                        "uploads it later; WANDB_MODE=online logs live)")
    g.add_argument("--tensorboard", nargs=0, action=_NeedsPackage, default=False,
                   help="write TensorBoard event files to RUN_DIR/tensorboard")


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric fields of a log record (not `step`, not bools), keyed prefix + name."""
    return {prefix + k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _hparam(v):
    """TensorBoard's hparams take bool / int / float / str only."""
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v)


class Trackers:
    """The trackers the run's settings ask for (none is fine: then log/close do nothing).

    run_dir: the run directory; settings: the run's settings (settings.json); args: the namespace holding `wandb`
    and `tensorboard` (absent attributes mean off); resume_step: None for a new run, else the step of the checkpoint
    the run continues from (0 when it had none yet).
    """

    def __init__(self, run_dir: str | Path, settings: dict, args, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        project = getattr(args, "wandb", None)
        use_tb = bool(getattr(args, "tensorboard", False))
        for flag, on in (("wandb", project), ("tensorboard", use_tb)):
            if on and (msg := _missing(flag)) is not None:
                raise TrackerUnavailable(msg)
        self.wandb = self._start_wandb(project, settings, resume_step) if project else None
        # the first step W&B takes: past the steps it holds when an online run resumes, 0 offline
        self.wandb_from = self.wandb.step if self.wandb is not None else 0
        self.tb = self._start_tensorboard(settings, resume_step) if use_tb else None

    def _start_wandb(self, project: str, settings: dict, resume_step: int | None):
        import wandb
        id_file = self.run_dir / "wandb_id.txt"
        if resume_step is not None and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [0-9a-z]
            id_file.write_text(run_id + "\n")
        return wandb.init(project=project, id=run_id, name=self.run_dir.resolve().name, dir=str(self.run_dir),
                          config=settings, resume="allow", mode=os.environ.get("WANDB_MODE", "offline"))

    def _start_tensorboard(self, settings: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
        # purge_step: events at steps >= it, from earlier files, are dropped; the checkpoint's own step stays
        writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                               purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            exp, ssi, sei = hparams({k: _hparam(v) for k, v in settings.items() if v is not None}, {})
            for summary in (exp, ssi, sei):
                writer.file_writer.add_summary(summary)
            writer.add_text("settings", "```\n" + json.dumps(settings, indent=1) + "\n```", 0)
            writer.flush()
        return writer

    def log(self, metrics: dict, step: int, prefix: str = ""):
        values = scalars(metrics, prefix)
        if not values:
            return
        if self.wandb is not None and step >= self.wandb_from:
            self.wandb.log(values, step=step)
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)
            self.tb.flush()

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None

