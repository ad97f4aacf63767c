"""Make the EmbeddingGemma fixtures in tests/fixtures/embeddinggemma_* with sentence-transformers and transformers.

Neither library is a dependency of rlsr. Run this file once from the repository root with a scratch environment
that has them (torch, transformers 5.24, sentence-transformers, safetensors); the outputs are committed:

    python3 -m venv refenv && refenv/bin/pip install torch==2.13.0 sentence-transformers transformers==5.24.0
    GEMMA=$(.venv/bin/python -m rlsr.assets download embeddinggemma | tail -1)
    refenv/bin/python tests/make_embeddinggemma_fixtures.py --embeddinggemma "$GEMMA"

Without --embeddinggemma only the tiny fixtures are written. It writes:

    fixtures/embeddinggemma_tiny/           a tiny random Gemma 3 encoder in EmbeddingGemma's layout, saved by
                                            sentence-transformers: Gemma3TextModel with use_bidirectional_attention
                                            (4 blocks, d = 32, sliding_window 8 on blocks 0, 1 and 3; the 400-piece
                                            test tokenizer with <|im_start|> ... <|im_end|> added around each text),
                                            mean pooling, Dense 32 -> 48 -> 32 without bias, Normalize; its
                                            config_sentence_transformers.json names an STS prompt
    fixtures/embeddinggemma_tiny_reference.{json,safetensors}
                                            SentenceTransformer.encode over it with the STS prompt (one batch, and
                                            each text alone), and the padded batch's last_hidden_state from
                                            transformers' Gemma3TextModel
    fixtures/embeddinggemma_encoder.{json,safetensors}
                                            EmbeddingGemma-300M: per case, texts, token counts with the prompt and
                                            <bos> <eos>, truncation flags, ids (short cases), and
                                            SentenceTransformer.encode(texts, prompt=STS prompt,
                                            normalize_embeddings=True), once as one batch and once text by text
The tiny weights are seeded, so rerunning gives the same files.
"""
import argparse
import json
import os
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from make_fixtures import ENCODER_CASES, PARAGRAPH

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROMPT_NAME = "STS"  # "task: sentence similarity | query: ", the prompt rlsr embeds response and reference with

TINY_GEMMA = dict(architectures=["Gemma3TextModel"], model_type="gemma3_text", vocab_size=416, hidden_size=32,
                  intermediate_size=48, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=16, query_pre_attn_scalar=16, rms_norm_eps=1e-6, rope_theta=1e6,
                  rope_local_base_freq=1e4, sliding_window=8, max_position_embeddings=64,
                  layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                  hidden_activation="gelu_pytorch_tanh", use_bidirectional_attention=True, pad_token_id=2,
                  bos_token_id=1, eos_token_id=2, attention_bias=False, attn_logit_softcapping=None,
                  final_logit_softcapping=None)
TINY_PROMPT = "similar: "
TINY_MAX_SEQ_LENGTH = 40
# Lengths around the window (|q - k| <= 4 after transformers halves sliding_window 8) and past max_seq_length.
TINY_TEXTS = ["Hello world", "", "The encoder stays frozen.", "Ærøskøbing 机器学习 🎉", PARAGRAPH, "reward " * 3,
              "Give three tips for staying healthy."]

CASES = {
    "short": ENCODER_CASES["short"] + ["A man is eating food.", "A man is eating a piece of bread.",
                                       "The new movie is awesome."],
    "non_ascii": ENCODER_CASES["non_ascii"],
    "empty": ENCODER_CASES["empty"],
    # One batch over every length: short, ~900 tokens (past the local layers' window of 256 either side), and past
    # max_seq_length (cut at 2048 tokens, <eos> kept).
    "mixed": [ENCODER_CASES["short"][0], PARAGRAPH * 40, "", ENCODER_CASES["non_ascii"][3], PARAGRAPH * 14, "Yes."],
}
# Every token this many times: "word" repeated gives one token per repeat; the two lengths straddle 2048 with the
# prompt, <bos> and <eos> (found by the script and recorded: the last that fits, the first that is cut).
BOUNDARY_BASE = "word "


def tiny_tokenizer_dir(path: Path):
    """The 400-piece test tokenizer with a Gemma-like template: <|im_start|> text <|im_end|>."""
    tok = json.loads((FIXTURES / "tokenizer" / "tokenizer.json").read_text())
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]},
                           "<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}}}
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "padding_side": "right",
        "model_max_length": TINY_MAX_SEQ_LENGTH}, indent=1))


def make_tiny():
    from sentence_transformers import SentenceTransformer, models
    from transformers import Gemma3TextConfig, Gemma3TextModel
    out = FIXTURES / "embeddinggemma_tiny"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    torch.manual_seed(0)
    backbone = Gemma3TextModel(Gemma3TextConfig(**TINY_GEMMA)).eval()
    with torch.no_grad():  # random norms too: Gemma's (1 + w) with w = 0 would hide a missing offset
        for name, p in backbone.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    src = out.parent / ".embeddinggemma_tiny_src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    backbone.save_pretrained(src)
    tiny_tokenizer_dir(src)
    transformer = models.Transformer(str(src), max_seq_length=TINY_MAX_SEQ_LENGTH)
    dense = [models.Dense(32, 48, bias=False, activation_function=torch.nn.Identity()),
             models.Dense(48, 32, bias=False, activation_function=torch.nn.Identity())]
    for d in dense:
        torch.nn.init.normal_(d.linear.weight, std=0.3)
    st = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean"), *dense, models.Normalize()],
                             prompts={PROMPT_NAME: TINY_PROMPT, "query": "query: "}, device="cpu")
    st.save(str(out))
    shutil.rmtree(src)
    (out / "README.md").unlink(missing_ok=True)
    # EmbeddingGemma's own file (sentence-transformers 5.1's format); 6.x would keep the limit in tokenizer_config.json
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": TINY_MAX_SEQ_LENGTH,
                                                                "do_lower_case": False}, indent=4))
    st = SentenceTransformer(str(out), device="cpu")  # what a user's directory gives, read back

    batch = st.encode(TINY_TEXTS, prompt_name=PROMPT_NAME, batch_size=len(TINY_TEXTS), convert_to_tensor=True)
    alone = torch.cat([st.encode([t], prompt_name=PROMPT_NAME, convert_to_tensor=True) for t in TINY_TEXTS])
    features = st.tokenize([TINY_PROMPT + t for t in TINY_TEXTS])
    model = Gemma3TextModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        hidden = model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    ref = {"sentence_transformers": __import__("sentence_transformers").__version__,
           "transformers": transformers.__version__, "prompt": TINY_PROMPT, "max_seq_length": st.max_seq_length,
           "texts": TINY_TEXTS, "ids": [row[m.bool()].tolist() for row, m in
                                        zip(features["input_ids"], features["attention_mask"])],
           "modules": [type(m).__name__ for m in st]}
    (FIXTURES / "embeddinggemma_tiny_reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    save_file({"batch": batch.float().contiguous(), "alone": alone.float().contiguous(),
               "hidden": hidden.float().contiguous(), "mask": features["attention_mask"].contiguous()},
              FIXTURES / "embeddinggemma_tiny_reference.safetensors")


def boundary_texts(st, prompt: str) -> list[str]:
    """'word ' * n for the two n whose token count (prompt, <bos>, <eos> included) is max_seq_length and one more."""
    count = lambda n: len(st.tokenizer(prompt + BOUNDARY_BASE * n, truncation=False)["input_ids"])
    n = st.max_seq_length - count(0)
    while count(n) > st.max_seq_length:
        n -= 1
    while count(n + 1) <= st.max_seq_length:
        n += 1
    assert count(n) == st.max_seq_length and count(n + 1) == st.max_seq_length + 1, (count(n), count(n + 1))
    return [BOUNDARY_BASE * n, BOUNDARY_BASE * (n + 1)]


def make_embeddinggemma(path: Path):
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(path), device="cpu")
    prompt = st.prompts[PROMPT_NAME]
    ref = {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
           "modules": [type(m).__name__ for m in st], "max_seq_length": st.max_seq_length,
           "prompt_name": PROMPT_NAME, "prompt": prompt, "cases": {}}
    embeddings = {}
    kw = dict(prompt=prompt, normalize_embeddings=True, convert_to_tensor=True)
    cases = dict(CASES, boundary=boundary_texts(st, prompt))
    for name, texts in cases.items():
        print(name, flush=True)
        n_tokens = [len(st.tokenizer(prompt + t, truncation=False)["input_ids"]) for t in texts]  # <bos>, <eos> too
        ids = [st.tokenizer(prompt + t, truncation=True, max_length=st.max_seq_length)["input_ids"] for t in texts]
        ref["cases"][name] = {"texts": texts, "num_tokens": n_tokens,
                              "truncated": [n > st.max_seq_length for n in n_tokens],
                              "ids": ids if name in ("short", "non_ascii", "empty") else None,
                              "last_ids": [x[-3:] for x in ids]}
        if name == "boundary":  # tokenization only: two more 2048-token passes would double the test's time
            continue
        embeddings[name] = st.encode(texts, batch_size=len(texts), **kw).float().contiguous()
        embeddings[name + "_alone"] = torch.cat([st.encode([t], **kw) for t in texts]).float().contiguous()
    cos = lambda a, b: float(st.encode([a], **kw) @ st.encode([b], **kw).T)
    ref["cosines"] = {"paraphrase": cos("A man is eating food.", "A man is eating a piece of bread."),
                      "unrelated": cos("A man is eating food.", "The new movie is awesome.")}
    (FIXTURES / "embeddinggemma_encoder.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    save_file(embeddings, FIXTURES / "embeddinggemma_encoder.safetensors")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddinggemma", type=Path, help="the EmbeddingGemma-300M sentence-transformers directory")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    make_tiny()
    if args.embeddinggemma is not None:
        make_embeddinggemma(args.embeddinggemma)
    else:
        print("no --embeddinggemma: skipping fixtures/embeddinggemma_encoder.*")
