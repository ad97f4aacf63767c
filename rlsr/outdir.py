"""eval.py's output folder: what it wrote (written.json, so --overwrite removes exactly those files and nothing a
user put beside them) and the rules of --resume (a checkpoint's results are reused only under the same settings,
prompts and weights)."""
from __future__ import annotations

import json
from pathlib import Path

from rlsr.benchmarks import Checkpoint, EvalError
from rlsr.checkpoint import write_json
from rlsr.lock import LOCK_FILE

WRITTEN_LIST = "written.json"  # every file eval.py wrote into --out-dir: all that --overwrite removes


def files_under(out: Path) -> dict[str, int]:
    """Every file under --out-dir (relative path -> modification time, ns)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def written(out: Path) -> list[str]:
    """What eval.py wrote into --out-dir so far (WRITTEN_LIST): relative paths inside it, nothing else."""
    try:
        files = json.loads((out / WRITTEN_LIST).read_text())["files"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return []
    root = out.resolve()
    return [f for f in files if isinstance(f, str) and (out / f).resolve().is_relative_to(root)
            and (out / f).resolve() != root]


def record_written(out: Path, before: dict[str, int]):
    """Add to WRITTEN_LIST every file that is new or changed since `before` (a `files_under` snapshot)."""
    now = files_under(out)
    new = {f for f, t in now.items() if before.get(f) != t and f not in (WRITTEN_LIST, LOCK_FILE)}
    write_json(out / WRITTEN_LIST, {"files": sorted(set(written(out)) | new)})


def remove_written(out: Path):
    """--overwrite: remove exactly the files an earlier eval.py wrote here (WRITTEN_LIST), then the folders that
    leaves empty; anything else in --out-dir stays, and is said so."""
    folders = set()
    for f in written(out):
        (out / f).unlink(missing_ok=True)
        folders.update((out / f).parents)
    (out / WRITTEN_LIST).unlink(missing_ok=True)
    for d in sorted((d for d in folders if d.is_relative_to(out) and d != out), key=lambda d: -len(d.parts)):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    kept = [f for f in files_under(out) if f != LOCK_FILE]
    if kept:
        print(f"--overwrite: kept {len(kept)} file(s) in {out} that eval.py did not write, e.g. {kept[0]}")


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def finished(out: Path, ckpt: Checkpoint, settings: dict, prompts: dict[str, list[str]]) -> bool:
    """Whether per_checkpoint/<name>.json holds this checkpoint's complete results under these settings; a file
    made with other settings or prompts raises EvalError naming the difference."""
    file = out / "per_checkpoint" / f"{ckpt.name}.json"
    if not file.exists():
        return False
    try:
        r = json.loads(file.read_text())
        old_settings, old_prompts, old_path = r["settings"], r["prompts"], r["checkpoint"]
        if not isinstance(r["metrics"], dict) or not isinstance(r["per_item"], dict):
            raise TypeError("no metrics")
    except (json.JSONDecodeError, KeyError, TypeError):
        print(f"note: {file} is incomplete; {ckpt.name} is evaluated again")
        return False
    for key in sorted(set(settings) | set(old_settings)):
        if settings.get(key) != old_settings.get(key):
            raise EvalError(f"--resume: {file} was made with {flag(key)} {old_settings.get(key)!r}, this run has "
                            f"{settings.get(key)!r}; use the same flags, or --overwrite (or another --out-dir)")
    if old_path != str(ckpt.path):
        raise EvalError(f"--resume: {file} holds checkpoint {old_path}, but {ckpt.name} is now {ckpt.path}")
    if r.get("weights_sha256") != ckpt.weights_sha256:
        print(f"note: the weights in {ckpt.path} changed since {file} was written (sha256 of the weight files); "
              f"{ckpt.name} is evaluated again")
        return False
    if old_prompts != prompts:
        changed = next(b for b in sorted(set(prompts) | set(old_prompts)) if prompts.get(b) != old_prompts.get(b))
        raise EvalError(f"--resume: {file} was evaluated on other {changed} prompts "
                        f"({len(old_prompts.get(changed, []))} vs {len(prompts.get(changed, []))} now: the set of "
                        "checkpoints changed which prompts fit --max-prompt-tokens); use --overwrite")
    return True


def prepare_out_dir(args, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out-dir {out} exists and is not a directory")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not (args.overwrite or args.resume):
        raise EvalError(f"--out-dir {out} exists and is not empty: pass --overwrite to replace its results, "
                        "--resume to keep its finished checkpoints, or choose another --out-dir")
