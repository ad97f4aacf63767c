"""Hugging Face-layout checkpoint files: safetensors (single or sharded) + config.json, written atomically.

Layout of a directory this module writes (what transformers' `from_pretrained` reads):
    config.json
    model.safetensors                                  when everything fits in one shard, else
    model-00001-of-0000N.safetensors ... + model.safetensors.index.json
A directory is written under a temporary name beside the target and renamed into place, so a killed process
leaves either the old directory or the new one, never half of one; a leftover temporary (the process was killed
mid-write) is removed by `remove_stale_temporaries` when the run starts again. Directories and files get the modes
the user's umask gives any new file (tempfile would make them private), so a shared group can read a model.
`write_manifest` records every file's size and sha256 and `verify_manifest` checks them, so a truncated or
corrupted checkpoint is recognised before it is loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "model.safetensors.index.json"


def _open(file: Path, device=None):
    """safe_open, with the file named when it is not a readable safetensors file (e.g. truncated)."""
    try:
        return safe_open(file, "pt", device=str(device or "cpu"))
    except Exception as e:  # safetensors raises its own SafetensorError, not an OSError
        raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt: {e})") from None


def shard_files(path: Path) -> dict[str, Path]:
    """tensor name -> file holding it."""
    if (path / INDEX).exists():
        try:
            index = json.loads((path / INDEX).read_text())
            return {name: path / file for name, file in index["weight_map"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path / INDEX}: not a safetensors index ({type(e).__name__}: {e})") from None
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{path}: no weights (neither model.safetensors nor {INDEX})")
    with _open(single) as f:
        return {name: single for name in f.keys()}


def stored_shapes(path: str | Path) -> dict[str, list[int]]:
    """Name -> shape of every stored tensor, from the files' headers only (no tensor is read). safe_open checks that
    a file's header and size agree, so a truncated file fails here."""
    path = Path(path)
    where = shard_files(path)
    shapes = {}
    for file in sorted(set(where.values())):
        if not file.exists():
            raise FileNotFoundError(f"{file}: listed in {path / INDEX} but missing")
        with _open(file) as f:
            shapes.update({name: list(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def check_tensors(path: Path, stored: dict[str, list[int]], expected: dict[str, torch.Size],
                  optional: set[str] = frozenset()):
    """A ValueError naming the first missing tensor, unexpected tensor or shape mismatch; names in `optional` may be
    present or absent."""
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ValueError(f"{path}: checkpoint is missing tensor {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(stored) - set(expected) - set(optional))
    if extra:
        raise ValueError(f"{path}: checkpoint has unexpected tensor {extra[0]!r}"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    wrong = [k for k in expected if list(stored[k]) != list(expected[k])]
    if wrong:
        raise ValueError(f"{path}: tensor {wrong[0]!r} has shape {list(stored[wrong[0]])}, the model expects "
                         f"{list(expected[wrong[0]])}")


def load_safetensors_dir(path: str | Path, expected: dict[str, torch.Size], optional: set[str] = frozenset(),
                         dtype: torch.dtype | None = None, device=None) -> dict[str, torch.Tensor]:
    """Read every tensor of an HF-layout directory, after checking names and shapes against `expected`
    (`check_tensors`). Names in `optional` are returned when present."""
    path = Path(path)
    check_tensors(path, stored_shapes(path), expected, optional)
    out = {}
    for file in sorted(set(shard_files(path).values())):
        with _open(file, device) as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: Path):
    """Give `root` and everything below it the modes a plain mkdir / open would: 0o777 / 0o666 minus the umask."""
    mask = umask()
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def remove_stale_temporaries(parent: Path, prefix: str = ".", older_than: float = 0.0) -> list[Path]:
    """Delete what killed writers left in `parent` (".NAME.tmp-*" and ".NAME.old-*" starting with `prefix`, last
    modified more than `older_than` seconds ago); returns what was removed."""
    parent, now = Path(parent), time.time()
    stale = [p for p in parent.glob(prefix + "*") if (".tmp-" in p.name or ".old-" in p.name)
             and now - p.stat().st_mtime > older_than] if parent.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary directory; on success it replaces `path` (the old one, if any, is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        apply_umask(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


MANIFEST = "manifest.json"


def sha256_file(path: Path, progress=None) -> str:
    """Hex sha256 of a file; `progress(n)` is called with each chunk's byte count (a tqdm bar's `update`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return h.hexdigest()


def weights_digest(path: str | Path) -> tuple[str, str | None]:
    """(sha256 over the weight files' bytes, in name order; the first tensor holding a NaN or inf, or None), read one
    tensor at a time: what identifies a checkpoint's weights, and whether they are usable."""
    files = sorted(set(shard_files(Path(path)).values()))
    h = hashlib.sha256()
    for file in files:
        h.update(file.name.encode() + b"\0" + sha256_file(file).encode())
    for file in files:
        with _open(file) as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return h.hexdigest(), name
    return h.hexdigest(), None


def write_manifest(root: Path) -> None:
    """manifest.json: size and sha256 of every other file under `root` (written last, inside the temporary dir)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    write_json(root / MANIFEST, {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                                 for p in files})


def verify_manifest(root: Path) -> str | None:
    """None if every file listed in root/manifest.json has its recorded size and hash, else what is wrong."""
    root = Path(root)
    try:
        listed = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{root / MANIFEST}: unreadable ({e.__class__.__name__})"
    for name, want in listed.items():
        p = root / name
        if not p.is_file():
            return f"{p}: missing"
        if p.stat().st_size != want["bytes"]:
            return f"{p}: {p.stat().st_size} bytes, the manifest says {want['bytes']}"
        if sha256_file(p) != want["sha256"]:
            return f"{p}: sha256 differs from the manifest"
    return None


def save_safetensors_dir(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict,
                         dtype: torch.dtype | None = None, max_shard_bytes: int = 5 << 30) -> Path:
    """Write config.json and the tensors (sharded above max_shard_bytes) into directory `path`.

    Not atomic by itself: wrap it in `atomic_dir` to write a whole checkpoint (weights, tokenizer, state) at once.
    """
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.to("cpu").contiguous()
    shards, size = [{}], 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("model*.safetensors*"):  # an earlier save with other sharding
        stale.unlink()
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    write_json(path / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return path
