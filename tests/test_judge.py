"""The pairwise judge: verdict parsing, both-orders scoring, the OpenAI-compatible HTTP client against a real local
server, and the local engine backend on the packaged SmolLM2."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlsr.judge import (SYSTEM_PROMPT, HTTPJudge, JudgeError, LocalJudge, build_judge_prompt, pairwise_win_rate,
                        parse_verdict)

# ---------------------------------------------------------------- parser

@pytest.mark.parametrize("reply,expected", [
    ("A", "A"), ("B", "B"), (" B\n", "B"), ("a", "A"), ("b", "B"), ("'b'", "B"), ('"A"', "A"), ("“B”", "B"),
    ("**A**", "A"), ("`B`", "B"), ("### B", "B"), ("A.", "A"), ("B!", "B"), ("(A)", "A"), ("[B]", "B"),
    ("A\n\nOutput A answers the question.", "A"), ("B: it is more complete", "B"), ("A, because", "A"),
    ("B is better", "B"), ("(A) is clearer", "A"),
    ("Output (A)", "A"), ("Output (B) is better.", "B"), ("output (b)", "B"), ("Output B", "B"),
    ("**Output (A)**", "A"), ("Answer: B", "B"), ("**Answer:** A", "A"), ("Verdict - B", "B"),
    ("The better output is A", "A"), ("The best response is (b).", "B"), ("Response A's answer", "A"),
    ("Preferred output: [A]", "A"), ("answer: b", "B"), ("Output (A) is better than Output (B)", "A"),
])
def test_parse_verdict_accepts(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize("reply", [
    "", "   ", "C", "AB", "A good answer would be B", "A isolated", "A\tgood", "Both are fine", "I think A",
    "Neither",
    "Alpha", "Output C", "Output Alpha", "Answer: a good one", "Tie", "A and B are equally good", "b is better",
    "The answer depends", "1",
])
def test_parse_verdict_rejects(reply):
    assert parse_verdict(reply) is None


def test_prompt_holds_both_outputs_in_order_and_is_deterministic():
    p = build_judge_prompt("  Name a colour. ", "red {x}", "blue")
    assert p == build_judge_prompt("Name a colour.", "red {x}", "blue")
    assert p.index("Name a colour.") < p.index("# Output (A)\nred {x}") < p.index("# Output (B)\nblue")
    assert p.rstrip().endswith("Reply with exactly one letter: A or B.")

# ---------------------------------------------------------------- scoring, both orders

def outputs_of(prompt):
    a = re.search(r"# Output \(A\)\n(.*?)\n\n# Output \(B\)", prompt, re.S).group(1)
    b = re.search(r"# Output \(B\)\n(.*?)\n\nWhich output", prompt, re.S).group(1)
    return a, b


def always(letter):
    return lambda prompts: [letter] * len(prompts)


def prefers_longer(prompts):
    replies = []
    for p in prompts:
        a, b = outputs_of(p)
        replies.append("A" if len(a) > len(b) else "B" if len(b) > len(a) else "Tie")
    return replies


QS = ["q1", "q2", "q3", "q4"]
REFS = ["four", "four", "four", "four"]


@pytest.mark.parametrize("letter", ["A", "B"])
def test_pure_position_bias_scores_every_item_one_half(letter):
    r = pairwise_win_rate(always(letter), QS, ["x", "longer", "y", "z"], REFS)
    assert r["per_item"] == [0.5] * 4 and r["win_rate"] == 0.5
    assert r["consistency"] == 0.0 and r["unparseable"] == 0 and r["n"] == 4


def test_length_preferring_judge_gives_hand_computed_win_rate():
    model = ["much longer", "ab", "four", "xyzw plus"]  # longer, shorter, same length (tie), longer
    r = pairwise_win_rate(prefers_longer, QS, model, REFS)
    assert r["per_item"] == [1.0, 0.0, 0.5, 1.0]
    assert r["win_rate"] == pytest.approx(2.5 / 4)
    assert r["consistency"] == 0.75           # the tie item has no parsed verdicts
    assert r["unparseable"] == 2              # its two "Tie" replies
    assert r["verdicts"][0] == ("model", "model") and r["verdicts"][1] == ("reference", "reference")
    assert r["verdicts"][2] == (None, None)
    assert r["replies"][0] == ("A", "B")     # (model shown as A, model shown as B)


def test_split_and_half_parsed_items_score_quarters():
    # Order 1 (model as A) is the first n prompts, order 2 (model as B) the next n.
    script = ["A", "A", "B", "junk", "A", "A"]
    r = pairwise_win_rate(lambda ps: script[:len(ps)], ["q0", "q1", "q2"], ["m"] * 3, ["r"] * 3)
    # item0: (A->model, junk->None) = 0.75; item1: (A->model, A->reference) = 0.5; item2: (B->reference, A->reference)
    assert r["per_item"] == [0.75, 0.5, 0.0]
    assert r["consistency"] == pytest.approx(1 / 3) and r["unparseable"] == 1


def test_mismatched_lengths_and_wrong_reply_count_raise():
    with pytest.raises(ValueError, match="lengths differ"):
        pairwise_win_rate(always("A"), ["q"], ["m", "m2"], ["r"])
    with pytest.raises(ValueError, match="replies"):
        pairwise_win_rate(lambda ps: ["A"], ["q"], ["m"], ["r"])

# ---------------------------------------------------------------- HTTP backend against a local server

class FakeOpenAI:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions protocol. `script` holds (status, body)
    answers to give first; after it, every request is answered with `reply` (a string, or a function of the body)."""

    def __init__(self):
        self.requests, self.script, self.reply, self.lock = [], [], "B", threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status, payload = owner.script.pop(0) if owner.script else (200, None)
                if payload is None:
                    reply = owner.reply(body) if callable(owner.reply) else owner.reply
                    payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": reply}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


KEY = "sk-test-secret-123"


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("RLSR_TEST_JUDGE_KEY", KEY)
    return "RLSR_TEST_JUDGE_KEY"


def test_http_judge_request_shape_and_win_rate(server, key_env):
    judge = HTTPJudge("judge-model", base_url=server.base_url + "/", api_key_env=key_env, max_tokens=5, workers=3)
    r = pairwise_win_rate(judge, ["q0", "q1"], ["m0", "m1"], ["r0", "r1"])
    assert r["per_item"] == [0.5, 0.5] and r["consistency"] == 0.0   # the server always answers "B"
    assert len(server.requests) == 4
    for req in server.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == f"Bearer {KEY}"
        assert req["headers"]["Content-Type"] == "application/json"
        body = req["body"]
        assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 5
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
    sent = sorted(req["body"]["messages"][1]["content"] for req in server.requests)
    assert sent == sorted([build_judge_prompt("q0", "m0", "r0"), build_judge_prompt("q1", "m1", "r1"),
                           build_judge_prompt("q0", "r0", "m0"), build_judge_prompt("q1", "r1", "m1")])


def test_http_judge_keeps_prompt_order_under_concurrency(server, key_env):
    server.reply = lambda body: "echo " + body["messages"][-1]["content"]
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, workers=4)
    prompts = [f"p{i}" for i in range(16)]
    assert judge(prompts) == ["echo " + p for p in prompts]


@pytest.mark.parametrize("status", [500, 429, 503])
def test_http_judge_retries_transient_errors(server, key_env, status):
    server.script = [(status, {"error": {"message": "busy"}}), (status, {"error": {"message": "busy"}})]
    server.reply = "Output (A)"
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, retries=3, backoff=0.01, workers=1)
    assert judge(["p"]) == ["Output (A)"]
    assert len(server.requests) == 3


def test_http_judge_gives_up_with_url_and_status(server, key_env):
    server.script = [(502, {"error": "bad gateway"})] * 3
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, retries=2, backoff=0.01)
    with pytest.raises(JudgeError) as e:
        judge(["p"])
    msg = str(e.value)
    assert server.base_url + "/chat/completions" in msg and "502" in msg and "3 attempts" in msg
    assert KEY not in msg and len(server.requests) == 3


def test_http_judge_fails_at_once_on_401_without_the_key(server, key_env):
    server.script = [(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})]
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, retries=3, backoff=0.01)
    with pytest.raises(JudgeError) as e:
        judge(["p"])
    msg = str(e.value)
    assert "401" in msg and server.base_url + "/chat/completions" in msg and KEY not in msg
    assert len(server.requests) == 1   # not retried


def test_http_judge_shows_other_4xx_bodies_with_the_key_redacted(server, key_env):
    server.script = [(400, {"error": {"message": f"bad model for key {KEY}"}})]
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, retries=3, backoff=0.01)
    with pytest.raises(JudgeError, match="HTTP 400.*bad model for key") as e:
        judge(["p"])
    assert KEY not in str(e.value) and len(server.requests) == 1


def test_http_judge_malformed_reply_and_null_content(server, key_env):
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, retries=0)
    server.script = [(200, {"choices": [{"message": {"role": "assistant", "content": None}}]}), (200, {"oops": 1})]
    assert judge(["p"]) == [""]
    with pytest.raises(JudgeError, match="not an OpenAI chat-completions reply"):
        judge(["p"])


def test_http_judge_connection_error_and_missing_key(monkeypatch, key_env):
    s = FakeOpenAI()
    url = s.base_url
    s.close()   # nothing listens on the port any more
    judge = HTTPJudge("m", base_url=url, api_key_env=key_env, retries=1, backoff=0.01, timeout=2)
    with pytest.raises(JudgeError, match=re.escape(url + "/chat/completions") + ".*2 attempts"):
        judge(["p"])
    monkeypatch.delenv(key_env)
    with pytest.raises(JudgeError, match=key_env):
        HTTPJudge("m", base_url=url, api_key_env=key_env)


def test_http_judge_without_auth_sends_no_authorization(server):
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=None, system_prompt=None)
    assert judge(["p"]) == ["B"]
    req = server.requests[0]
    assert "Authorization" not in req["headers"] and req["body"]["messages"] == [{"role": "user", "content": "p"}]

# ---------------------------------------------------------------- local backend

def test_local_judge_smollm2_end_to_end(smollm2_path):
    judge = LocalJudge.from_pretrained(smollm2_path, max_new_tokens=4, batch_size=4)
    qs = ["Name a primary colour.", "What is 2 + 2?"]
    r = pairwise_win_rate(judge, qs, ["Red.", "5"], ["Blue is a primary colour.", "2 + 2 = 4."])
    assert r["n"] == 2 and len(r["per_item"]) == 2 and 0 <= r["win_rate"] <= 1
    assert all(s in (0, 0.25, 0.5, 0.75, 1) for s in r["per_item"])
    assert all(isinstance(x, str) for pair in r["replies"] for x in pair)
    parsed = sum(v is not None for pair in r["verdicts"] for v in pair)
    assert parsed + r["unparseable"] == 4
    # Batching and length-sorting must not change which reply goes with which prompt (greedy decoding).
    prompts = [build_judge_prompt(q, "Red.", "Blue.") for q in qs] + ["Reply with the letter B."]
    single = LocalJudge(judge.model, judge.tokenizer, max_new_tokens=4, batch_size=1)(prompts)
    assert judge(prompts) == single

# ---------------------------------------------------------------- conversations (Arena-Hard's own system prompts)

def test_http_judge_sends_a_conversation_as_it_is(server, key_env):
    judge = HTTPJudge("m", base_url=server.base_url, api_key_env=key_env, max_tokens=100)
    conv = [{"role": "system", "content": "judge system"}, {"role": "user", "content": "question"}]
    assert judge([conv, "plain"]) == ["B", "B"]
    bodies = sorted((r["body"] for r in server.requests), key=lambda b: len(b["messages"][0]["content"]))
    assert bodies[0]["messages"] == conv and bodies[0]["max_tokens"] == 100
    assert bodies[1]["messages"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                     {"role": "user", "content": "plain"}]
