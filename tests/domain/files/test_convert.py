"""Converting Alpaca, ShareGPT and "Human: … Bot: …" transcripts into chat
lines: what each record becomes, every record that cannot be converted named
with its reason, and output that uploads as it is."""

import json

import pytest

from domain.files.convert import convert_file, convert_record, ConversionProblem
from tests.domain.files.helpers import validate

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat", "text": "### Instruction: ..."},
    {"instruction": "Be brief.", "output": "OK.", "system": "You are terse."},
]


def test_alpaca_records_become_user_and_assistant_messages():
    assert [convert_record("alpaca", record)["messages"] for record in ALPACA] == [
        [{"role": "user", "content": "Give three tips for staying healthy."},
         {"role": "assistant", "content": "Eat well, sleep, move."}],
        [{"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Be brief."},
         {"role": "assistant", "content": "OK."}],
    ]


def test_sharegpt_turns_become_messages():
    record = {"id": "x1", "conversations": [
        {"from": "system", "value": "Be nice."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"}, {"from": "user", "value": "Bye"}, {"from": "assistant", "value": "Bye!"}]}
    assert [(m["role"], m["content"]) for m in convert_record("sharegpt", record)["messages"]] == [
        ("system", "Be nice."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Bye!")]


def test_transcripts_split_at_speaker_labels():
    text = "Human: What is 2+2?\nBot: 4. Human: And 3+3?  Assistant: 6"
    assert convert_record("transcript", text)["messages"] == [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
    # A label glued to a word is not a label.
    assert convert_record("transcript", {"text": "Human: say NoBot: x\nBot: ok"})["messages"][0]["content"] == \
        "say NoBot: x"


@pytest.mark.parametrize(("source", "record", "reason"), [
    ("alpaca", {"instruction": "x"}, "missing 'output'"),
    ("alpaca", {"instruction": " ", "output": "y"}, "empty 'instruction'"),
    ("alpaca", {"instruction": "x", "output": 3}, "'output' must be a string, got number"),
    ("alpaca", {"instruction": "x", "input": ["a"], "output": "y"}, "'input' must be a string, got list"),
    ("alpaca", ["x"], "expected a JSON object, got list"),
    ("sharegpt", {"messages": []}, "missing 'conversations'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "turn 2: unknown 'from' \"robot\" (expected human, user, gpt, assistant, chatgpt, bot, system)"),
    ("sharegpt", {"conversations": [{"from": "human", "value": ""}]}, "turn 1: 'value' must be a non-empty string"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "only a question"}]},
     "the converted conversation is not a valid chat example: no assistant message"),
    ("transcript", "Hello there", "no speaker label (Human:, User:, Bot:, Assistant:, System:) found"),
    ("transcript", "Hi. Human: x Bot: y", "text before the first speaker label (Human:, User:, Bot:, Assistant:, "
                                         "System:)"),
    ("transcript", "Human: x Bot: ", "turn 2 (Bot:) is empty"),
    ("transcript", {"txt": "Human: x Bot: y"}, "a JSON transcript line needs a string 'text'"),
])
def test_a_record_that_cannot_be_converted_says_why(source, record, reason):
    with pytest.raises(ConversionProblem) as raised:
        convert_record(source, record)
    assert str(raised.value) == reason


def test_a_file_is_converted_with_every_bad_line_named(tmp_path):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(12)]
    lines[3] = json.dumps({"instruction": "q"})
    lines[7] = "{not json"
    lines.insert(5, "")
    source = tmp_path / "alpaca.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "chat.jsonl"
    conversion = convert_file("alpaca", source, out)
    assert (conversion.read, conversion.converted, conversion.blank) == (12, 10, 1)
    assert [number for number, _ in conversion.problems] == [4, 9]  # physical lines: the blank one counts
    assert conversion.problems[0][1] == "missing 'output'"
    assert conversion.problems[1][1].startswith("invalid JSON")
    assert conversion.summary() == "converted 10 of 12 lines; 2 could not be converted; 1 blank lines skipped"
    result = validate(out.read_bytes())  # the output uploads as it is
    assert result.ok, result.message()
    assert result.report["format"] == "chat" and result.report["examples"] == 10


def test_a_json_array_is_read_whole_and_named_by_record(tmp_path):
    records = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
               for i in range(3)] + [{"conversations": "nope"}]
    source = tmp_path / "sharegpt.json"
    source.write_text(json.dumps(records, indent=2))
    out = tmp_path / "chat.jsonl"
    conversion = convert_file("sharegpt", source, out)
    assert (conversion.unit, conversion.read, conversion.converted) == ("record", 4, 3)
    assert conversion.problems == [(4, "'conversations' must be a non-empty list")]
    assert len(out.read_text().splitlines()) == 3


def test_plain_transcript_lines_and_json_ones(tmp_path):
    source = tmp_path / "transcripts.txt"
    source.write_bytes("Human: Hi Bot: Hello\n".encode() + json.dumps({"text": "Human: a\nb Bot: c\nd"}).encode()
                       + b"\n\xff Human: x Bot: y\n")
    out = tmp_path / "chat.jsonl"
    conversion = convert_file("transcript", source, out)
    assert conversion.converted == 2
    assert conversion.problems == [(3, "not valid UTF-8 (bad byte at position 1)")]
    second = json.loads(out.read_text().splitlines()[1])
    assert second["messages"] == [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c\nd"}]


def test_an_unknown_source_is_refused(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="unknown source format 'dolly'"):
        convert_file("dolly", tmp_path / "in.jsonl", tmp_path / "out.jsonl")
