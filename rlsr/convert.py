"""Convert chat SFT data as users download it into rlsr's JSONL, counting what is kept and why anything is dropped.

    python -m rlsr.convert tulu-3-sft-mixture/data/*.parquet -o data/tulu3.jsonl
    python -m rlsr.convert Infinity-Instruct/7M/*.parquet -o data/infinity.jsonl --every-assistant-turn

Input files: .jsonl, .json (a list) or .parquet (read with pyarrow, which rlsr does not otherwise need) holding
records with `messages` [{role, content}] (TULU-3 SFT mixture) or `conversations` [{from, value}] (Infinity-Instruct,
ShareGPT). Output: one {"messages": [...], "id": ..., "source": ...} per line, ending with the assistant turn that is
the reference; rlsr/data.py reads it and uses everything before that turn as the prompt.

By default a conversation gives one example, cut after its last assistant turn (turns after it have no answer to
score). --every-assistant-turn gives one example per assistant turn instead, each with its own history. A record is
dropped, and counted under its reason, when rlsr/data.py would reject it: no assistant turn, no user turn before the
answer, a blank answer, an unknown role (e.g. tool calls), non-text content, or not an object.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

from rlsr.data import TURN_KEYS, DataError, parse_record


def read_records(path: Path) -> Iterator[dict]:
    """Records of a .jsonl, .json or .parquet file, streamed (parquet in row batches)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    elif path.suffix == ".json":
        yield from json.loads(path.read_text())
    else:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        yield DataError(f"invalid JSON ({e.msg})")


def examples_of(record, every_turn: bool) -> list[dict]:
    """A downloaded record -> conversations that end with an assistant turn (not yet validated)."""
    if not isinstance(record, dict):
        return [record]  # parse_record rejects it with a reason
    key = next((k for k in ("messages", "conversations") if k in record), None)
    if key is None or not isinstance(record[key], list):
        return [record]
    role_key = TURN_KEYS[key][0]
    answers = [i for i, t in enumerate(record[key]) if isinstance(t, dict) and
               TURN_KEYS[key][2].get(t.get(role_key)) == "assistant"]
    if not answers:
        return [record]
    cuts = answers if every_turn else answers[-1:]
    return [{key: record[key][:i + 1]} for i in cuts]


def reason(error: DataError) -> str:
    """A count key for a rejection: the message without its location, ids and quoted values."""
    text = str(error).split(": ", 1)[-1]
    text = re.sub(r"\[\d+\]", "[i]", text)
    return re.sub(r", got .*", "", text)


def convert(inputs: list[Path], output: Path, every_turn: bool = False) -> Counter:
    counts: Counter = Counter()
    with open(output, "w", encoding="utf-8") as out:
        for path in inputs:
            for n, record in enumerate(read_records(path)):
                counts["records"] += 1
                for k, conv in enumerate([] if isinstance(record, DataError) else examples_of(record, every_turn)):
                    try:
                        messages, reference = parse_record(conv, f"{path.name}[{n}]")
                    except DataError as e:
                        counts[f"dropped: {reason(e)}"] += 1
                        continue
                    out.write(json.dumps({"messages": [*messages, {"role": "assistant", "content": reference}],
                                          "id": f"{path.name}:{n}" + (f":{k}" if every_turn else ""),
                                          "source": record.get("source", path.name)}, ensure_ascii=False) + "\n")
                    counts["kept"] += 1
                if isinstance(record, DataError):
                    counts[f"dropped: {reason(record)}"] += 1
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help=".jsonl / .json / .parquet files")
    ap.add_argument("-o", "--output", type=Path, required=True, help="rlsr JSONL to write")
    ap.add_argument("--every-assistant-turn", action="store_true", help="one example per assistant turn")
    args = ap.parse_args(argv)
    counts = convert(args.inputs, args.output, args.every_assistant_turn)
    print(f"{counts.pop('records')} records -> {counts.pop('kept', 0)} examples in {args.output}")
    for why, n in counts.most_common():
        print(f"  {n:8d}  {why}")


if __name__ == "__main__":
    main()
