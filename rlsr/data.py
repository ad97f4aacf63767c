"""Prompt/reference pairs for RLSR: JSONL loading, the packaged AlpacaEval and IFEval data, a resumable sampler.

An `Example` is a prompt conversation plus the reference answer the reward compares samples against.

    load_dataset("alpaca_eval", "train")   packaged AlpacaEval, split as below
    load_dataset("data/train.jsonl")       a .jsonl file (one object a line) or a .json file (a list of objects)
    load_ifeval()                          the 541 IFEval prompts as raw records (no references)

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
`data/train.jsonl:17: field 'output' must be a non-empty string`.

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

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlsr.assets import eval_data_dir

BUILTIN = ("alpaca_eval",)
ALPACA_EVAL_FILE = "alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
IFEVAL_FILE = "ifeval/data/input_data.jsonl"
ARENA_HARD_DIR = "arena_hard/data/arena-hard-v2.0"  # question.jsonl + model_answer/<baseline>.jsonl
TEST_FRACTION = 0.2
ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TURN_KEYS = {"messages": ("role", "content", ROLES), "prompt": ("role", "content", ROLES),
             "conversations": ("from", "value", SHAREGPT_ROLES)}


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


def load_jsonl(path: str | Path) -> list[Example]:
    """Examples of a .jsonl file (one record a line; blank lines skipped) or a .json file holding a list."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
        numbered = [(f"{path}[{i}]", f"{path.name}[{i}]", item) for i, item in enumerate(items)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"{path}:{n}", f"{path.name}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
    return [Example(*parse_record(item, where), id=uid, source=path.name) for where, uid, item in numbered]


def split_key(instruction: str) -> str:
    return hashlib.sha256(" ".join(instruction.split()).encode("utf-8")).hexdigest()


def alpaca_eval_test_keys(records: list[dict]) -> set[str]:
    """Keys of the held-out instructions: the lowest round(0.2 * n) distinct keys of each subset."""
    by_subset = defaultdict(set)
    for r in records:
        by_subset[r["dataset"]].add(split_key(r["instruction"]))
    return {k for keys in by_subset.values() for k in sorted(keys)[: round(TEST_FRACTION * len(keys))]}


def load_alpaca_eval(split: str | None = None) -> list[Example]:
    path = eval_data_dir() / ALPACA_EVAL_FILE
    records = json.loads(path.read_text(encoding="utf-8"))
    if split not in (None, "all", "train", "test"):
        raise ValueError(f"alpaca_eval split must be 'train', 'test', 'all' or None, got {split!r}")
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


def load_dataset(name_or_path: str, split: str | None = None) -> list[Example]:
    """A built-in data set by name (see BUILTIN), else a .jsonl / .json file (split must then be None or 'all')."""
    if name_or_path == "alpaca_eval":
        return load_alpaca_eval(split)
    if name_or_path == "ifeval":
        raise ValueError("ifeval has no reference answers; use rlsr.data.load_ifeval() for its prompts")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a built-in data set ({', '.join(BUILTIN)}) nor a file")
    if split not in (None, "all"):
        raise ValueError(f"{path}: a file has no splits; got split={split!r}")
    return load_jsonl(path)


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
            raise ValueError(f"sampler state is for {state['num_examples']} examples, this sampler has "
                             f"{len(self.examples)}")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
