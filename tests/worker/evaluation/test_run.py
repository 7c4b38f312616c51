"""The items an evaluation reads from a file, in every format: what is the
prompt, what is the reference, which examples are skipped."""

import json

from domain.files.split import split_lines
from worker.evaluation.run import load_items


def jsonl(lines: list[dict]) -> list[bytes]:
    return [b"".join(json.dumps(line).encode() + b"\n" for line in lines)]


def test_prompt_completion_items_continue_the_plain_prompt():
    lines = [{"prompt": f"Q{i}:", "completion": f" A{i}", "split": "TEST" if i % 2 else "TRAIN"} for i in range(6)]
    items, skipped = load_items(jsonl(lines), "test", 0, None)
    assert skipped == 0
    assert [(item.line, item.prompt, item.reference, item.format) for item in items] == [
        (2, "Q1:", " A1", "prompt_completion"), (4, "Q3:", " A3", "prompt_completion"),
        (6, "Q5:", " A5", "prompt_completion")]
    assert all(item.plain for item in items)
    assert items[0].loss_example() == {"prompt": "Q1:", "completion": " A1"}


def test_text_items_have_no_prompt_and_the_text_as_reference():
    lines = [{"text": f"document {i}"} for i in range(20)]
    items, skipped = load_items(jsonl(lines), "all", 0, limit=5)
    assert (len(items), skipped) == (5, 0)
    assert [(item.prompt, item.reference, item.format) for item in items[:2]] == [
        ("", "document 0", "text"), ("", "document 1", "text")]
    assert items[0].loss_example() == {"text": "document 0"}
    # The test split is the one training held out.
    test_lines = {line for line, _example, split in split_lines(jsonl(lines)) if split == "TEST"}
    assert {item.line for item in load_items(jsonl(lines), "test", 0, None)[0]} == test_lines


def test_preference_items_prompt_with_the_input_and_answer_with_the_preferred_output():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    lines = [
        {"input": {"messages": messages}, "preferred_output": [{"role": "assistant", "content": "Hello!"}],
         "non_preferred_output": [{"role": "assistant", "content": "Go away."}]},
        # Only a tool call preferred: no text to compare with, skipped.
        {"input": {"messages": messages}, "preferred_output": [{"role": "assistant", "tool_calls": [call]}],
         "non_preferred_output": [{"role": "assistant", "content": "No."}]},
    ]
    items, skipped = load_items(jsonl(lines), "all", 0, None)
    assert skipped == 1
    [item] = items
    assert (item.prompt, item.reference, item.format, item.plain) == (messages, "Hello!", "preference", False)


def test_chat_items_are_unchanged():
    lines = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
             {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                           {"role": "user", "content": "more?"}]}]
    items, skipped = load_items(jsonl(lines), "all", 0, None)
    assert skipped == 1
    assert (items[0].prompt, items[0].reference, items[0].format) == ([{"role": "user", "content": "q"}], "a", "chat")
