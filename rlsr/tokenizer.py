"""Tokenizer on the `tokenizers` library, with the checkpoint's own chat template rendered as transformers does.

A checkpoint's chat template is part of its behaviour: Qwen2.5 and SmolLM2 inject different default system
prompts, so a hand-written ChatML gives other token ids than the model was tuned on. We render the template
with jinja2 in the same sandbox configuration as transformers (trim_blocks, lstrip_blocks, `raise_exception`,
a `tojson` that does not escape HTML) and tokenize the text without adding special tokens, as transformers'
`apply_chat_template(tokenize=True)` does. Base checkpoints without a template get PLAIN_TEMPLATE; the packaged
Gemma 3 base model gets GEMMA3_TEMPLATE; `chat_template=` (the scripts' --chat-template FILE) overrides any.

Which tokens belong to assistant turns (the SFT loss mask) is found by rendering the conversation up to each
assistant turn with and without it: the characters the turn adds, up to and including its end-of-turn token,
are the assistant's. The newline a template writes after the end-of-turn token is not: generation stops at
that token, so the model never produces what follows it.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

# For base checkpoints that ship no template. The end of an assistant turn is the eos token, so SFT teaches the
# model to stop and the sampler stops on it.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize + ': ' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# Gemma 3's turn format, for base Gemma checkpoints (which ship no template); the packaged gemma-3-270m gets it
# (rlsr/gguf_convert.py). For text messages it renders exactly what the official Gemma 3 instruct template renders
# (tests/test_gemma3_packaged.py): <bos>, a system message prefixed to the first user turn, roles user/model, each
# message trimmed and closed by <end_of_turn>. A base model has never seen this format; SFT or RLSR teaches it.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' }}"
    "{% if loop.first %}{{ prefix }}{% endif %}{{ m['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


class _GenerationTag(jinja2.ext.Extension):
    """Accept transformers' `{% generation %}...{% endgeneration %}` markers; we find assistant spans ourselves."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(source)


def read_chat_template(path: str | Path) -> str:
    """A jinja chat template from a file (--chat-template), its syntax checked: errors name the file and line."""
    path = Path(path)
    try:
        source = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the chat template ({e.strerror})") from None
    try:
        compile_template(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{path}: line {e.lineno}: {e.message}") from None
    return source


def token_str(tok) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    return tok.get("content") if isinstance(tok, dict) else tok


def read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _ids(value) -> set[int]:
    return set() if value is None else {value} if isinstance(value, int) else set(value)


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, chat_template: str | None = None, special_tokens: dict | None = None,
                 extra_stop_ids: set[int] = frozenset(), config: dict | None = None):
        self.tk = tokenizer
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.has_chat_template = chat_template is not None
        self.chat_template = chat_template or PLAIN_TEMPLATE
        self._template = compile_template(self.chat_template)
        self.config = dict(config or {})  # tokenizer_config.json, written back on save
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)  # ids >= this are never real tokens
        self.eos_id = self.token_to_id(self.special_tokens.get("eos_token"))
        self.bos_id = self.token_to_id(self.special_tokens.get("bos_token"))
        self.end_of_turn_id = self._find_end_of_turn()
        self.stop_ids = frozenset({i for i in (self.eos_id, self.end_of_turn_id) if i is not None} | set(extra_stop_ids))
        if not self.stop_ids:
            raise ValueError("tokenizer has no eos token and its chat template no end-of-turn token: nothing to stop on")
        # Pad ids only fill tensors; every mask in rlsr is positional, never `ids == pad_id`.
        pad = self.token_to_id(self.special_tokens.get("pad_token"))
        self.pad_id = pad if pad is not None else min(self.stop_ids)

    @classmethod
    def from_pretrained(cls, path: str | Path, chat_template: str | None = None) -> "Tokenizer":
        """Load tokenizer.json (+ tokenizer_config.json, config.json, generation_config.json) from a directory.

        chat_template overrides the checkpoint's own template (jinja source).
        """
        path = Path(path)
        if not (path / "tokenizer.json").exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        tk = HFTokenizer.from_file(str(path / "tokenizer.json"))
        tcfg = read_json(path / "tokenizer_config.json")
        template = tcfg.get("chat_template")
        if isinstance(template, list):  # named templates: use "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (path / "chat_template.jinja").exists():  # transformers >= 4.43 writes the template to its own file
            template = (path / "chat_template.jinja").read_text()
        template = chat_template or template
        special = {k: token_str(tcfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        # Stop ids: eos of config.json, generation_config.json and the tokenizer (Qwen base vs instruct disagree).
        stop = _ids(read_json(path / "config.json").get("eos_token_id"))
        stop |= _ids(read_json(path / "generation_config.json").get("eos_token_id"))
        return cls(tk, template, special, stop, tcfg)

    def save_pretrained(self, path: str | Path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tk.save(str(path / "tokenizer.json"))
        cfg = dict(self.config)
        cfg.update(self.special_tokens)
        if self.has_chat_template:
            cfg["chat_template"] = self.chat_template
        (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.tk.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids, no special tokens added."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return self.tk.decode_batch([list(r) for r in rows], skip_special_tokens=skip_special_tokens)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **self.special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            return_assistant_mask: bool = False):
        """messages -> token ids (and, if asked, a 0/1 list marking tokens of assistant turns)."""
        text = self.render(messages, add_generation_prompt)
        enc = self.tk.encode(text, add_special_tokens=False)
        if not return_assistant_mask:
            return enc.ids
        spans = self.assistant_spans(messages, text)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc.offsets]
        return enc.ids, mask

    def assistant_spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of each assistant turn in `text` (the rendering of `messages`)."""
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError(f"the chat template does not render turn {i} as an extension of the earlier turns, "
                                 "so its assistant tokens cannot be located")
            spans.append((len(before), len(through.rstrip())))
        return spans

    def _find_end_of_turn(self) -> int | None:
        """The special token a template writes right after an assistant message (ChatML: <|im_end|>)."""
        try:
            text = self.render([{"role": "user", "content": "u"}, {"role": "assistant", "content": "zq"}])
        except jinja2.TemplateError:
            return None
        tail = text[text.rindex("zq") + 2:]
        enc = self.tk.encode(tail, add_special_tokens=False)
        specials = {t.content for t in self.tk.get_added_tokens_decoder().values() if t.special}
        return next((i for i, t in zip(enc.ids, enc.tokens) if t in specials), None)
