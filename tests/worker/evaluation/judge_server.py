"""A deterministic judge for tests: a real OpenAI-compatible HTTP server on
loopback (POST /v1/chat/completions, GET /v1/models) whose verdicts mean
something, unlike a tiny random model's. It reads the judge prompts of
domain/evaluations/judges.py and compares the quoted answers with the quoted
reference by character similarity (difflib's ratio after
domain/evaluations/text.normalize):

- pairwise: "Winner: A" or "Winner: B" for the closer answer, "Winner: tie"
  when the two are within TIE_MARGIN of each other;
- reference: "Score: N", N = 1 + round(4 * similarity).

`verdict_of` is the same rule for the tests to check the stored judgments
against; `requests` counts the calls."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

from domain.evaluations.text import normalize
from tests.peer import QuietHandler, http_server

MODEL = "referee"
TIE_MARGIN = 0.02
_SECTION = re.compile(r"\[(Question|Reference answer|Answer A|Answer B|Answer to grade)\]\n(.*?)(?=\n\n\[|\n\nReply with)", re.S)


def similarity(answer: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, normalize(answer), normalize(reference)).ratio()


def pairwise_verdict(first: str, second: str, reference: str) -> str:
    a, b = similarity(first, reference), similarity(second, reference)
    return "tie" if abs(a - b) <= TIE_MARGIN else "A" if a > b else "B"


def reference_score(answer: str, reference: str) -> int:
    return 1 + round(4 * similarity(answer, reference))


def _answer(prompt: str) -> str:
    sections = dict(_SECTION.findall(prompt))
    reference = sections.get("Reference answer", "")
    if "Answer to grade" in sections:
        score = reference_score(sections["Answer to grade"], reference)
        return f"Score: {score} - similarity to the reference decides"
    winner = pairwise_verdict(sections.get("Answer A", ""), sections.get("Answer B", ""), reference)
    return f"Winner: {winner} - closer to the reference"


@contextmanager
def running_judge() -> Iterator[dict]:
    """Yields {"base_url": ".../v1", "api_key": ..., "requests": [count]}."""
    state = {"api_key": "judge-secret-key-0123456789", "requests": [0]}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})
            else:
                self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.headers.get("Authorization") != f"Bearer {state['api_key']}":
                self.send_json(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                return
            state["requests"][0] += 1
            prompt = "\n".join(m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user")
            text = _answer(prompt)
            self.send_json(200, {
                "id": "chatcmpl-judge", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                          "total_tokens": (len(prompt) + len(text)) // 4},
            })

    with http_server(Handler) as base_url:
        yield {**state, "base_url": base_url}
