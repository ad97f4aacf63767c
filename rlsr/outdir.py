"""An output folder that knows what it wrote: eval.py's --out-dir lists every file it wrote in written.json, so
--overwrite removes exactly those and nothing a user put beside them."""
from __future__ import annotations

import json
from pathlib import Path

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
