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

import functools
import json
import math
import re
import signal
import threading
import time
from contextlib import contextmanager
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


# A checkpoint's template is untrusted code. Besides the sandbox (no attribute or call outside a safe set), every
# render is bounded in time and in size: it is stopped after RENDER_SECONDS, and no value it makes or reads, nor its
# output, may exceed RENDER_CHARS characters (or items). A chat prompt is a few thousand characters; these bounds
# are far above any real template's needs and far below what would exhaust a machine.
RENDER_SECONDS = 10.0
RENDER_CHARS = 1 << 22


class TemplateLimitError(ValueError):
    """A chat template ran past the time or size bound."""


def _too_big(x) -> bool:
    return isinstance(x, (str, bytes, list, tuple, dict)) and len(x) > RENDER_CHARS


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a deadline checked at every call, attribute, item and operator, and sizes
    checked before an operator or a call can build something huge (`'x' * 2000000000`, `s.center(10**9)`) and on
    every value read. Loops whose body touches none of these are stopped by SIGALRM (`_alarm`)."""
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    deadline = math.inf

    def tick(self):
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the chat template ran for more than {RENDER_SECONDS:g} s")

    def bounded(self, x):
        if _too_big(x):
            raise TemplateLimitError(f"the chat template made a value of more than {RENDER_CHARS} characters or items")
        return x

    def call_binop(self, context, operator, left, right):
        self.tick()
        sized = [x for x in (left, right) if isinstance(x, (str, list, tuple))]
        counts = [x for x in (left, right) if isinstance(x, int) and not isinstance(x, bool)]
        if operator == "*" and sized and counts and len(sized[0]) * counts[0] > RENDER_CHARS:
            raise TemplateLimitError(f"the chat template repeats a value of length {len(sized[0])} {counts[0]} times, "
                                     f"past the bound of {RENDER_CHARS} characters or items")
        if operator == "**" and len(counts) == 2 and abs(left) > 1 and right * left.bit_length() > 64 * RENDER_CHARS:
            raise TemplateLimitError(f"the chat template computes {left} ** {right}, a number too large")
        if operator == "%" and isinstance(left, str) and re.search(r"\d{7,}", left):
            raise TemplateLimitError("the chat template formats with a width or precision of a million or more")
        return self.bounded(super().call_binop(context, operator, left, right))

    def check_args(self, f, args: tuple):
        self.tick()
        for a in args:
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > RENDER_CHARS:
                raise TemplateLimitError(f"the chat template calls {getattr(f, '__name__', 'a function')} with the "
                                         f"number {a}, past the bound of {RENDER_CHARS}")

    def call(__self, __context, __obj, *args, **kwargs):
        __self.check_args(__obj, (*args, *kwargs.values()))
        return __self.bounded(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj, attribute):
        self.tick()
        return self.bounded(super().getattr(obj, attribute))

    def getitem(self, obj, argument):
        self.tick()
        return self.bounded(super().getitem(obj, argument))


def _bounded_filter(env: _BoundedEnvironment, f):
    """A filter whose numeric arguments are bounded and whose result is checked (`"x" | center(10**9)`)."""
    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
    def call(*args, **kwargs):
        env.check_args(f, (*args, *kwargs.values()))
        return env.bounded(f(*args, **kwargs))
    return call


@contextmanager
def _alarm(seconds: float):
    """SIGALRM after `seconds` raises TemplateLimitError in the main thread (elsewhere the deadline alone holds)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TemplateLimitError(f"the chat template ran for more than {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, stop)
    earlier = signal.setitimer(signal.ITIMER_REAL, seconds)[0]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if earlier:  # someone else's alarm: give it back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(earlier - seconds, 1e-3))


def render_bounded(template: jinja2.Template, **context) -> str:
    """Render under RENDER_SECONDS and RENDER_CHARS: the output is built piece by piece and stopped once too long."""
    env = template.environment
    env.deadline = time.monotonic() + RENDER_SECONDS
    out, size = [], 0
    try:
        with _alarm(RENDER_SECONDS):
            for piece in template.generate(**context):
                size += len(piece)
                if size > RENDER_CHARS:
                    raise TemplateLimitError(f"the chat template's output passed {RENDER_CHARS} characters")
                out.append(piece)
    except RecursionError:
        raise TemplateLimitError("the chat template recursed too deeply") from None
    finally:
        env.deadline = math.inf
    return "".join(out)


def compile_template(source: str) -> jinja2.Template:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters = {name: _bounded_filter(env, f) for name, f in env.filters.items()}
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
        return render_bounded(self._template, messages=messages, add_generation_prompt=add_generation_prompt,
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
