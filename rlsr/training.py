"""What both training scripts share: their common flags, the checks made before anything is written, loading the
policy and the data, and the `Trainer`: the guarded optimizer step, held-out evaluations, checkpoints, compute, the
state a resume needs (`Trainer.state_dict`), and the end of a run.

A training script (train_rlsr.py, train_sft.py) is its own flags, this set-up, and one loop. The order is fixed so
that a failed start leaves nothing behind: flags are checked (`parse`), then data and models are loaded, and only
then is the run directory created (`Trainer`, through `open_run`). Inputs a user got wrong raise UsageError, which `cli` prints as one
`error: ...` line with exit code 2; a run that cannot go on (non-finite numbers, a full disk) raises TrainingError
(exit code 1), and what it has written so far stays resumable.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rlsr import distributed, lora
from rlsr.assets import BASE_POLICIES, POLICIES, policy_path
from rlsr.checkpoint import verify_manifest
from rlsr.data import DataError, chat_prompts, load_dataset, prompt_key, records_sha256
from rlsr.flops import Compute
from rlsr.judge import JudgeError
from rlsr.lock import LockedError
from rlsr.model import ModelConfig, Transformer, check_model_dir
from rlsr.plot import write_curves
from rlsr.run import CheckpointError, Run, space_shortage
from rlsr.tokenizer import Tokenizer, read_chat_template, read_json
from rlsr.tracking import Trackers, add_tracker_args

# Flags a resumed run may change (those a script has): how long it runs, what it writes, and where and in how much
# memory it computes; every other flag is the run's own (settings.json).
RESUMABLE = ("steps", "save_every", "eval_every", "sample_every", "resume", "restart", "device", "max_nonfinite_steps",
             "wandb", "tensorboard", "micro_batch_size", "grad_checkpointing", "save_adapters", "kl_model_offload")


def resumable_flags(ap: argparse.ArgumentParser) -> str:
    """The flags of this parser a resumed run may change, as the user types them."""
    dests = {a.dest for a in ap._actions}
    return ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE if k != "resume" and k in dests)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help: the description as written, and every flag's default."""


class UsageError(ValueError):
    """Bad flags or inputs: nothing was written; fix the command and run it again."""


class TrainingError(RuntimeError):
    """The run cannot go on; its last checkpoint (if any) is intact and resumable."""


def cli(main):
    """Run a script's main() as a command: usage errors become one line on stderr and exit code 2."""
    try:
        main()
    except (UsageError, DataError, FileExistsError, FileNotFoundError, LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (TrainingError, CheckpointError, JudgeError) as e:  # JudgeError: a reward judge failed or did not grade
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


class Deprecated(argparse.Action):
    """An old flag name: stores into the new flag's dest and says so."""

    def __init__(self, option_strings, dest, new: str, **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def common_args(ap: argparse.ArgumentParser, *, steps: int, lr: float, warmup: int, micro_batch: int,
                out_dir: str) -> dict[str, argparse._ArgumentGroup]:
    """The flags both scripts take, in groups the scripts add their own flags to."""
    groups = {name: ap.add_argument_group(title) for name, title in
              [("model", "model"), ("data", "data"), ("optimization", "optimization"), ("run", "run")]}
    g = groups["model"]
    g.add_argument("--init", help="HF-layout checkpoint to start from, or a packaged policy: "
                   f"{', '.join(POLICIES)} (default: the first, SmolLM2-135M-Instruct; gemma3-270m is a base model)")
    g.add_argument("--chat-template", metavar="FILE", help="jinja chat template to use instead of the checkpoint's own "
                   "(saved with every checkpoint of the run)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
    g.add_argument("--amp", action="store_true", help="bf16 autocast over fp32 weights (GPU): bf16 matmuls, fp32 "
                   "master weights and optimizer; log-softmax stays fp32 either way")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward: less memory")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (shard parameters, gradients and "
                   "optimizer state) instead of DDP")
    g = groups["data"]
    g.add_argument("--data", default="alpaca_eval",
                   help="built-in data set (alpaca_eval, sharegpt) or a .jsonl / .json file (rlsr/data.py)")
    g.add_argument("--train-split", help="split to train on (default: 'train'; for a file with --eval-data, 'all')")
    g.add_argument("--eval-data", help="held-out data (default: --data itself, its --eval-split)")
    g.add_argument("--eval-split", help="split of the held-out data (default: 'test'; for --eval-data FILE, 'all')")
    g.add_argument("--max-prompt-tokens", type=int, default=512, help="longer prompts are left out (and counted)")
    g = groups["optimization"]
    g.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate, in (0, 1]")
    g.add_argument("--warmup-steps", type=int, default=warmup, help="linear warm-up of the learning rate, then constant")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay, in [0, 1]")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
    g.add_argument("--micro-batch-size", type=int, default=micro_batch, help="rows per forward/backward (memory, not "
                   "maths); RLSR counts them in whole groups of G rows, at least one group")
    g.add_argument("--max-nonfinite-steps", type=int, default=3, help="stop after this many steps in a row whose loss or "
                   "gradient norm is NaN/inf (each such step is skipped: no update)")
    g = groups["run"]
    g.add_argument("--out-dir", default=out_dir, help="run directory (must be new or empty)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its newest intact checkpoint, with its "
                   "settings; only the flags it lists may change")
    g.add_argument("--restart", action="store_true", help="with --resume: start the run over from step 1 when it has "
                   "no checkpoint (otherwise refused)")
    g.add_argument("--seed", type=int, default=0, help="seed of prompt order, sampling and init")
    g.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps (0 = only final/). A checkpoint "
                   "holds the weights and the AdamW state: about 3x the fp32 weights (1.6 GB for the 135M default); "
                   "the newest two are kept")
    g.add_argument("--eval-every", type=int, default=0, help="held-out evaluation every N steps (0 = start and end)")
    add_tracker_args(ap)
    lora.add_lora_args(ap)
    return groups


def check(condition: bool, message: str):
    if not condition:
        raise UsageError(message)


def check_range(args, name: str, low: float | None = None, high: float | None = None, low_open: bool = False):
    """--name must be a finite number in [low, high] (or (low, high] with low_open)."""
    v = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    check(v is not None and math.isfinite(v), f"{flag} {v} is not a finite number")
    if low is not None:
        check(v > low if low_open else v >= low, f"{flag} {v} must be {'>' if low_open else '>='} {low}")
    if high is not None:
        check(v <= high, f"{flag} {v} must be <= {high}")


def check_common(args, world: int, batch_flag: str):
    for name in ("steps", "micro_batch_size", "max_prompt_tokens", "max_nonfinite_steps"):
        check_range(args, name, 1)
    for name in ("save_every", "eval_every", "warmup_steps", "weight_decay"):
        check_range(args, name, 0)
    check_range(args, "lr", 0, 1, low_open=True)
    check_range(args, "weight_decay", 0, 1)  # decoupled: each step multiplies the weights by 1 - lr x weight decay
    check_range(args, "grad_clip", 0, low_open=True)
    check(getattr(args, batch_flag) % world == 0,
          f"--{batch_flag.replace('_', '-')} {getattr(args, batch_flag)} does not split evenly over {world} ranks")
    check(not (args.amp and args.dtype != "float32"), "--amp keeps fp32 weights; use it with --dtype float32")
    try:
        lora.LoRAConfig.from_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None


def explicit_flags(ap: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """The flags the command line actually gave (argparse only fills in defaults for attributes not already set)."""
    unset = object()
    ns = ap.parse_args(argv, namespace=argparse.Namespace(**{a.dest: unset for a in ap._actions}))
    return {k: v for k, v in vars(ns).items() if v is not unset}


def check_settings(ap: argparse.ArgumentParser, saved, file: Path):
    """A run's settings.json against this script's flags: an object holding every flag a resumed run keeps, each
    a value that flag can take (a number for a numeric flag, one of its choices, true/false for a switch)."""
    for a in ap._actions:
        if a.dest in RESUMABLE or a.dest == "help" or a.help == argparse.SUPPRESS:
            continue
        check(a.dest in saved, f"{file}: no {a.dest!r} (the run's {a.option_strings[0]}); a resumed run keeps its "
                               "settings, so it cannot take a default for this one")
        v = saved[a.dest]
        if a.choices:
            ok = v in a.choices
        elif a.type in (int, float):
            ok = isinstance(v, (int, float) if a.type is float else int) and not isinstance(v, bool)
        elif isinstance(a.default, bool):
            ok = isinstance(v, bool)
        else:
            ok = True
        check(ok or (v is None and a.default is None), f"{file}: {a.dest!r} is {v!r}, not a value of "
                                                       f"{a.option_strings[0]}")


def check_writable(path: str | Path):
    """The directory `path` (or the nearest existing folder above it, where it would be made) must take a new file:
    tried with a temporary one (permission bits do not tell for root or read-only mounts)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise UsageError(f"{path}: cannot write there ({p}: {e.strerror})") from None


def check_environment(args):
    """--seed and --device, before any process group or device is touched."""
    check(0 <= args.seed < 2 ** 32, f"--seed {args.seed} must be in [0, 2**32)")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise UsageError(f"--device {args.device!r}: {str(e).splitlines()[0]}") from None
    check(device.type in ("cpu", "cuda"), f"--device {args.device}: expected cpu or cuda[:N]")
    if device.type == "cuda":
        check(torch.cuda.is_available(), f"--device {args.device}: CUDA is not available on this machine")
        check(device.index is None or device.index < torch.cuda.device_count(),
              f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA devices")


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; with --resume, the run's own settings (checked: `check_settings`), refusing any other changed flag."""
    args = ap.parse_args(argv)
    check_environment(args)
    if not args.resume:
        check(not args.restart, "--restart goes with --resume RUN_DIR")
        Run.check_new(args.out_dir)  # fail before any work, not after loading everything
        check_writable(args.out_dir)
        return args
    try:
        saved = Run.read_settings(args.resume)
    except ValueError as e:  # settings.json that is not JSON
        raise UsageError(f"--resume {args.resume}: {e}") from None
    given = explicit_flags(ap, argv)
    for key, value in given.items():
        if key not in RESUMABLE and key in saved and saved[key] != value:
            raise UsageError(f"--{key.replace('_', '-')} {value} differs from the run's {saved[key]} "
                             f"({Path(args.resume) / 'settings.json'}); a resumed run keeps its settings, only "
                             f"{resumable_flags(ap)} may change")
    check_settings(ap, saved, Path(args.resume) / "settings.json")
    check_writable(args.resume)
    return argparse.Namespace(**{**vars(args), **saved, **{k: given[k] for k in RESUMABLE if k in given},
                                 "resume": args.resume})


def splits(args) -> tuple[str, str]:
    """The training and held-out splits the flags (or a run's settings.json) mean: a built-in set trains on 'train'
    and holds out 'test'; a file given with --eval-data is trained on whole ('all'), as is a held-out file."""
    train = args.train_split or ("all" if args.eval_data and Path(args.data).suffix else "train")
    held = args.eval_split or ("all" if args.eval_data and Path(args.eval_data).suffix else "test")
    return train, held


def load_splits(args, say) -> tuple[list, list]:
    """The training and held-out examples the flags name (held-out: [] when args.no_eval).

    A built-in data set trains on 'train' and holds out 'test'. A file with --eval-data trains on all of it; a file
    alone is split in two by a hash of each prompt (rlsr/data.py), said so. Held-out prompts that also occur in the
    training data are reported, never silently used. The sha256 of both sets' records goes into settings.json
    (`data_sha256`): a resumed run refuses data whose content changed, even by one character."""
    builtin = not Path(args.data).suffix
    train_split, eval_split = splits(args)
    eval_data = args.eval_data or args.data
    for split, flag in ((train_split, "--train-split"), (eval_split, "--eval-split")):
        check(split in ("train", "test", "all"), f"{flag} {split!r}: expected train, test or all")
    train = load_dataset(args.data, train_split)
    check(len(train) > 0, f"{args.data} (split {train_split}): no training examples")
    if not builtin and not args.eval_data and not getattr(args, "no_eval", False):
        say(f"note: {args.data}: training on its '{train_split}' split and evaluating on its '{eval_split}' split "
            "(a fixed hash split of the prompts); pass --eval-data FILE to train on all of it")
    held = []
    if not getattr(args, "no_eval", False):
        held = load_dataset(eval_data, eval_split)
        check(len(held) > 0, f"{eval_data} (split {eval_split}): no held-out examples; pass --eval-data FILE, or "
                             "--no-eval")
        seen = {prompt_key(ex) for ex in train}
        overlap = sum(prompt_key(ex) in seen for ex in held)
        if overlap:
            say(f"WARNING: {overlap} of {len(held)} held-out prompts ({eval_data}, {eval_split}) also occur in the "
                f"training data ({args.data}, {train_split}): the held-out figures are partly measured on training data")
    digest, before = records_sha256(train + held), getattr(args, "data_sha256", None)
    check(before in (None, digest), f"{args.data}: the data changed since the run started (the sha256 of its records "
                                    f"is {digest[:12]}..., the run's {str(before)[:12]}...); resume on the same data")
    args.data_sha256 = digest
    return train, held


def filter_prompts(tok, examples: list, max_tokens: int, what: str, source: str, say) -> tuple[list, dict]:
    """Examples whose chat-formatted prompt fits max_tokens (and those prompts' ids by id); how many left out is
    said, and none left is an error naming the data."""
    kept, ids = chat_prompts(tok, examples, max_tokens)
    if len(kept) < len(examples):
        say(f"{what}: left out {len(examples) - len(kept)} of {len(examples)} prompts longer than {max_tokens} tokens")
    check(len(kept) > 0, f"{source}: all {len(examples)} {what} prompts are longer than --max-prompt-tokens "
                         f"{max_tokens}")
    return kept, ids


def init_path(args) -> Path:
    return policy_path(args.init)


def load_init(args, path: Path, say=print) -> tuple[ModelConfig, Tokenizer]:
    """The --init checkpoint's config and tokenizer, through checked_model's checks, with --chat-template FILE instead
    of its own template if given."""
    if args.init in BASE_POLICIES:
        say(f"{args.init} is a base model: it has never seen the chat format, so most of its first samples run to the "
            "length cap (completions/clipped_ratio near 1) until training teaches it to end its turn")
    try:
        template = read_chat_template(args.chat_template) if args.chat_template else None
    except ValueError as e:
        raise UsageError(f"--chat-template {e}") from None
    return checked_model(path, "--init", chat_template=template)


def checked_model(path: Path, flag: str, same_vocabulary_as: Tokenizer | None = None,
                  chat_template: str | None = None) -> tuple[ModelConfig, Tokenizer]:
    """An HF-layout directory given by `flag`, through eval.py's checks (rlsr.model.check_model_dir): its config
    and tokenizer (under `chat_template`, jinja source, if given). same_vocabulary_as: a tokenizer whose vocabulary
    it must share (a KL model scores the policy's token ids, so another vocabulary would compare unrelated tokens)."""
    try:
        cfg, tok = check_model_dir(path, chat_template)
    except ValueError as e:
        raise UsageError(f"{flag} {path}: {e}") from None
    check(same_vocabulary_as is None or tok.tk.get_vocab() == same_vocabulary_as.tk.get_vocab(),
          f"{flag} {path}: its tokenizer's vocabulary differs from the policy's; the KL term compares log-probs of "
          "the same token ids, so both models need one vocabulary")
    return cfg, tok


def prompt_budget(args, cfg: ModelConfig, new_tokens: int, flag: str) -> int:
    """The longest prompt kept: --max-prompt-tokens, lowered so that a prompt and `new_tokens` fit the model's
    positions; `new_tokens` alone must fit them (it sizes the sampler's cache)."""
    positions = cfg.max_position_embeddings
    check(new_tokens < positions, f"{flag} {new_tokens}: the model has {positions} positions (max_position_embeddings "
                                  f"of its config.json); at most {positions - 1} new tokens fit after a prompt")
    if positions - new_tokens < args.max_prompt_tokens:
        print(f"note: prompts longer than {positions - new_tokens} tokens are left out: the model has {positions} "
              f"positions, {new_tokens} of them for {flag}")
    return min(args.max_prompt_tokens, positions - new_tokens)


def checkpoint_to_resume(args, d) -> Path | None:
    """With --resume: the newest intact checkpoint (checked by rank 0, the same on every rank); else None. What
    cannot be honoured is refused before anything is touched: a run that finished (final/ intact and --steps not
    raised), --steps before the checkpoint, and a run without a checkpoint unless --restart."""
    if not args.resume:
        return None
    run = Run(args.resume, {})
    final = run.path / "final"
    if (final / "manifest.json").exists() and verify_manifest(final) is None:
        done = read_json(final / "settings.json").get("steps")
        if isinstance(done, int) and args.steps <= done:
            raise UsageError(f"nothing to resume: the run finished ({done} steps, {final} written); pass a larger "
                             "--steps to train it further")
    found = run.intact_checkpoint() if d.main else None
    found = distributed.gather(found, d)[0]
    if found is None and any(run.ckpt_dir.glob("step-*")):
        raise TrainingError(f"{args.resume}: no intact checkpoint (every one fails its manifest); start a new run")
    if found is None:
        check(args.restart, f"no checkpoint: starting over is refused without --restart ({args.resume} has none to "
                            f"resume from; --restart trains it again from step 1, replacing its logs)")
        speaker(d)(f"no checkpoint in {args.resume}: --restart, training again from step 1")
        return None
    step = int(found.name.split("-")[1])
    check(args.steps >= step, f"--steps {args.steps} is before the newest checkpoint {found} (step {step}): a resumed "
                              f"run continues from it, so --steps must be >= {step}")
    return found


def load_policy(path: Path, tok: Tokenizer, args, d, dtype: torch.dtype | None = None) -> Transformer:
    dtype = dtype or getattr(torch, args.dtype)
    policy = Transformer.from_pretrained(path, dtype=dtype, device=d.device, output_vocab=tok.vocab_size)
    policy.gradient_checkpointing = args.grad_checkpointing
    return policy


def load_trained(init: Path, ckpt: Path | None, tok: Tokenizer, args, d) -> Transformer:
    """The policy a run trains: the checkpoint's weights on resume, else --init's. With --lora-rank: --init's weights,
    frozen, under adapters (rlsr/lora.py), fresh or, on resume, the checkpoint's."""
    cfg = lora.LoRAConfig.from_args(args)
    if cfg is None:
        return load_policy(ckpt or init, tok, args, d)
    policy = load_policy(init, tok, args, d)
    try:
        lora.apply(policy, cfg, seed=args.seed)
    except ValueError as e:  # --lora-targets naming no module of this model
        raise UsageError(str(e)) from None
    if ckpt is not None:
        try:
            lora.load_adapters(policy, ckpt, cfg)
        except (OSError, ValueError) as e:
            raise TrainingError(f"--resume: {e}") from None
    speaker(d)(lora.describe(policy, cfg))
    return policy


def frozen_dtype(args) -> torch.dtype:
    """dtype of a frozen model (the KL model): bf16 under --amp, where only the trained policy needs fp32 master
    weights (half the memory and, with offloading, half the traffic); else the run's --dtype."""
    return torch.bfloat16 if args.amp else getattr(torch, args.dtype)


def open_run(args, d) -> Run:
    """The run directory, created (or reopened for --resume) now that every input has been checked."""
    settings = vars(args)
    run = Run.open(args.resume, settings, d.main) if args.resume else Run.create(args.out_dir, settings, d.main)
    distributed.barrier(d)
    return run


def adamw_with_warmup(params, lr: float, weight_decay: float, warmup_steps: int, fused: bool = True):
    """AdamW (betas 0.9/0.99; fused: one kernel for all parameters) with a linear warm-up over `warmup_steps`
    optimizer steps, then a constant learning rate."""
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay, fused=fused)
    warmup = max(warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / (warmup + 1)))
    return optimizer, scheduler


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t.to_local() if hasattr(t, "to_local") else t).all()) for t in tensors)


class Trainer:
    """The machinery around a training loop: the run directory, the optimizer step with its non-finite guard,
    logging, compute, held-out evaluations, checkpoints, resume and the end of the run.

    policy is the Transformer; `trainer.model` is what the update runs through (DDP / FSDP2 / the policy itself).
    Everything a resume needs besides the weights is `state_dict()`; `restore` loads it back from a checkpoint."""

    def __init__(self, args, d, tok: Tokenizer, policy: Transformer, sampler, init: Path):
        self.args, self.d, self.tok, self.policy, self.sampler = args, d, tok, policy, sampler
        self.model = distributed.wrap(policy, d)
        if d.main:  # the disk must hold what the run writes (final/, and a checkpoint of ~3x the weights) before it trains
            weights = sum(p.numel() * p.element_size() for p in policy.parameters())
            what = "final/ and its checkpoints" if args.save_every else "final/"
            short = space_shortage(Path(args.resume or args.out_dir), weights * (3 if args.save_every else 1), what)
            check(short is None, f"{short}; free some space or choose another --out-dir")
        self.run = open_run(args, d)                       # only now: every input has been checked
        self.lora = lora.LoRAConfig.from_args(args)        # None: every weight is trained
        self.compute = Compute(policy.config, tok.vocab_size, offset=compute_offset(init))
        self.generator = torch.Generator().manual_seed(args.seed)  # the rollout's draws, the same stream on all ranks
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        fused = not (d.fsdp and d.device.type == "cpu")  # fused AdamW does not take CPU DTensors
        # the schedule counts optimizer steps: several per step with PPO epochs (--num-iterations)
        self.optimizer, self.scheduler = adamw_with_warmup(
            self.params, args.lr, args.weight_decay, args.warmup_steps * getattr(args, "num_iterations", 1), fused)
        self.step_done = 0                                 # the last step whose update ran (or was skipped)
        self.nonfinite_in_row, self.nonfinite_steps = 0, 0
        self.trackers: Trackers | None = None
        self.warned: set[str] = set()
        self.evals: dict[int, dict] = {}                   # held-out results by step
        self.adapters = lora.PeftAdapters(policy, self.lora, init) if self.lora else None

    # ---- resumable state: everything a resume needs besides the weights
    def state_dict(self) -> dict:
        """Tensors and plain values only (loaded with weights_only=True). Collective under FSDP: every rank calls it.
        The trained weights are not here: checkpoints hold them in HF layout (`_weights`), or a LoRA run's adapters
        in PEFT's layout."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {"step": self.step_done,
                "optimizer": distributed.full_optimizer_state(self.model, self.optimizer, self.d),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "generators": [self.generator.get_state()]},
                "compute": self.compute.state_dict(), "nonfinite_steps": self.nonfinite_steps,
                "nonfinite_in_row": self.nonfinite_in_row}

    def load_state_dict(self, state: dict):
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.d)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        for g, st in zip([self.generator], rng["generators"]):
            g.set_state(st)
        self.compute.load_state_dict(state["compute"])
        self.step_done = state["step"]
        self.nonfinite_steps = state["nonfinite_steps"]
        self.nonfinite_in_row = state.get("nonfinite_in_row", 0)

    def restore(self, ckpt: Path | None) -> int:
        """Continue from `ckpt` (None: a new run; the weights were loaded from it by the caller): its state, the
        held-out results logged before it, the trackers. Returns the step to continue after."""
        state = self.run.read_state(ckpt)
        if state is not None:
            self.load_state_dict(state)
        logged = {e["step"]: e for e in self.run.read_log("eval.jsonl")} if self.d.main else {}
        self.evals = distributed.gather(logged, self.d)[0]
        if self.d.main:
            self.trackers = Trackers(self.run.path, self.run.settings, self.args,
                                     self.step_done if self.args.resume else None)
        return self.step_done

    # ---- one step
    def amp(self):
        """bf16 autocast of the forward passes under --amp (fp32 weights)."""
        return torch.autocast(self.d.device.type, dtype=torch.bfloat16, enabled=self.args.amp)

    def step(self, step: int, loss: float) -> tuple[float, bool]:
        """Clip, check and apply the accumulated gradients. loss: the step's loss summed over ranks. Returns the
        gradient norm and whether the update was applied (a non-finite loss or norm skips it)."""
        self.step_done = step
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.args.grad_clip)
        grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else grad_norm.item()
        applied = math.isfinite(loss) and math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
            self.scheduler.step()
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_steps += 1
            self.nonfinite_in_row += 1
            tqdm.write(f"step {step}: non-finite loss {loss} or gradient norm {grad_norm}; update skipped")
            if self.nonfinite_in_row >= self.args.max_nonfinite_steps:
                raise TrainingError(f"{self.nonfinite_in_row} steps in a row had a non-finite loss or gradient norm "
                                    f"(last at step {step}); nothing was written for them. Lower --lr (now "
                                    f"{self.args.lr}) or check the data" + self._resume_note())
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients before the next rollout needs the memory
        if applied and not all_finite(self.params):
            raise TrainingError(f"the weights became non-finite at step {step} (learning rate {self.args.lr}); they "
                                "are not saved" + self._resume_note())
        return grad_norm, applied

    def step_compute(self) -> Compute:
        """A step's compute, to count its passes in (their backward passes cost less with frozen weights)."""
        return Compute(self.policy.config, self.tok.vocab_size, frozen_weights=self.lora is not None)

    def count(self, step_compute: Compute):
        """Add a step's (or an evaluation's) counts, every rank's, to the run's compute."""
        merge_compute(self.compute, step_compute, self.d)

    def _resume_note(self) -> str:
        last = self.run.latest_checkpoint()
        return f"; the last checkpoint, {last}, is intact" if last else ""

    def log(self, record: dict, file: str = "metrics.jsonl"):
        """A record to RUN_DIR/file and, for metrics and held-out results, to the trackers."""
        self.run.log(record, file)
        if self.trackers is not None and file in ("metrics.jsonl", "eval.jsonl"):
            self.trackers.log(record, record["step"], "eval/" if file == "eval.jsonl" else "")

    def warn_collapse(self, step: int, metrics: dict):
        """Say loudly, once, when the policy's next-token distribution is near uniform: a collapsed model."""
        uniform = math.log(self.policy.output_vocab)
        if metrics.get("entropy", 0.0) >= 0.9 * uniform and "entropy" not in self.warned:
            self.warned.add("entropy")
            tqdm.write(f"WARNING: step {step}: entropy {metrics['entropy']:.2f} nats, near the uniform distribution's "
                       f"{uniform:.2f}: the policy has collapsed to noise (learning rate {self.args.lr} too high?)")

    # ---- held-out evaluation (both scripts): at the start, every --eval-every steps, at the end
    def evaluate(self, step: int, evaluate, announce: str | None = None) -> dict:
        """The held-out result at `step`: evaluate(compute) -> {name: value} on the full weights, logged to
        eval.jsonl with its compute counted; a result logged before a resumed run's checkpoint is not recomputed.
        announce: said before it is computed."""
        if step not in self.evals:
            if announce:
                speaker(self.d)(announce)
            eval_compute = Compute(self.policy.config, self.tok.vocab_size)
            with distributed.full_weights(self.model, self.d), self.amp():
                self.evals[step] = {"step": step, **evaluate(eval_compute)}
            self.count(eval_compute)
            self.log(self.evals[step], "eval.jsonl")
        return self.evals[step]

    def due(self, step: int) -> bool:
        """Whether --eval-every asks for a held-out evaluation after this step (the last step's comes at the end)."""
        return bool(self.args.eval_every) and step % self.args.eval_every == 0 and step != self.args.steps

    # ---- checkpoints and the end of the run
    def _weights(self, adapters: bool = False) -> dict:
        """The full weights on the main rank (collective), or the adapters alone."""
        weights = lora.adapter_weights(self.policy) if adapters else distributed.full_state_dict(self.model, self.d)
        check_finite = all_finite(weights.values()) if self.d.main else True
        if not check_finite:
            raise TrainingError("non-finite weights; refusing to write them" + self._resume_note())
        return weights

    def maybe_checkpoint(self, step: int):
        """Every --save-every steps (collective under FSDP: every rank calls it)."""
        if not self.args.save_every or step % self.args.save_every:
            return
        state = self.state_dict()
        weights = self._weights(adapters=self.lora is not None)   # a LoRA run's checkpoint: its adapters
        self.run.save_checkpoint(step, self.adapters or self.policy, self.tok, state, weights,
                                 {"compute.json": self.compute.summary()})
        if self.d.main:
            write_curves(self.run.path)

    def finish(self) -> Path:
        """The final weights (with their compute.json) in RUN_DIR/final; a LoRA run's merged into the base weights,
        and with --save-adapters also as adapters in RUN_DIR/adapters."""
        weights = self._weights()
        if self.lora is not None:
            if self.args.save_adapters:
                self.run.save_final(self.adapters, self.tok, {k: v for k, v in weights.items() if lora.is_adapter(k)},
                                    {"compute.json": self.compute.summary()}, name="adapters")
            weights = lora.merged(weights, self.lora.scaling)
        return self.run.save_final(self.policy, self.tok, weights, {"compute.json": self.compute.summary()})

    def summarize(self, summary: str, warning: str | None = None, **fields):
        """The run's closing line, said and logged to summary.jsonl with its compute; a warning said after it."""
        self.log({"step": self.args.steps, "summary": summary, **fields, "compute": self.compute.summary()},
                 "summary.jsonl")
        say = speaker(self.d)
        say(summary)
        if warning:
            say(warning)

    def outputs(self, final: Path) -> str:
        """The closing line: what the run directory holds, and where the final weights are."""
        held = [n for n in ("metrics.jsonl", "eval.jsonl", "samples.jsonl", "summary.jsonl", "curves.png",
                            "checkpoints", "tensorboard", "wandb") if (self.run.path / n).exists()]
        return f"outputs: {self.run.path} ({', '.join(held)}); final weights {final}"

    def close(self, final: Path):
        """curves.png of the whole run, the trackers closed, the outputs said, the process group ended."""
        if self.d.main:
            write_curves(self.run.path)
        if self.trackers is not None:
            self.trackers.close()
        speaker(self.d)(self.outputs(final))
        distributed.close(self.d)


def merge_compute(total: Compute, step: Compute, d):
    """Add every rank's counts of a step (or an evaluation) to the run's total, identical on all ranks."""
    state = step.state_dict()
    flat = {f"{kind}/{phase}": v for kind in ("flops", "tokens") for phase, v in state[kind].items()}
    summed = distributed.all_reduce(flat, d)
    total.merge({kind: {k.split("/", 1)[1]: v for k, v in summed.items() if k.startswith(kind + "/")}
                 for kind in ("flops", "tokens")})


def compute_offset(path: Path) -> float:
    """Training FLOPs already spent on the starting checkpoint (its compute.json), 0 for an untrained one."""
    return float(read_json(Path(path) / "compute.json").get("flops", 0.0))


class Laps:
    """Wall-clock seconds of a step's phases: `lap(name)` adds the time since the previous lap to times[name]."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.t = time.perf_counter()

    def lap(self, name: str):
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.t
        self.t = now

    @property
    def total(self) -> float:
        return sum(self.times.values())


@contextmanager
def on_device(model, device, offload: bool):
    """A frozen model on `device` for the block, and back on the CPU after it when offloading (--kl-model-offload)."""
    model.to(device)
    yield model
    if offload:
        model.to("cpu")


def speaker(d):
    """print on the main rank, nothing elsewhere."""
    return print if d.main else (lambda *a, **k: None)
