"""Tokenization, labels, truncation and batching, on SmolLM2's real tokenizer
and chat template (and the tiny random Llama for the attention checks)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker.training.data import (
    IGNORE_INDEX,
    TokenizedExample,
    dataset_stats,
    load_split_data,
    pack_batch,
    tokenize_dataset,
    tokenize_example,
    truncate,
)

END = "<|im_end|>"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


@pytest.fixture
def one_thread():
    """Exact comparisons: one thread, so reductions run in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled_spans(tokenizer, example: TokenizedExample) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are aligned with input_ids
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


def conversation(*turns: str, system: str | None = "Answer briefly.", weights=()) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for index, text in enumerate(turns):
        role = "user" if index % 2 == 0 else "assistant"
        messages.append({"role": role, "content": text})
    for message, weight in zip([m for m in messages if m["role"] == "assistant"], weights):
        message["weight"] = weight
    return {"messages": messages}


def repeat_example(word: str, times: int) -> dict:
    return conversation(f"Say {word} {times} times.", " ".join([word] * times))


# --------------------------------------------------------------------------- labels


def test_only_assistant_tokens_are_labelled_in_a_multi_turn_example(tokenizer):
    example = tokenize_example(tokenizer, conversation("Hi!", "Hello, how can I help?", "Count to 3.", "1, 2, 3"))

    assert labelled_spans(tokenizer, example) == [f"Hello, how can I help?{END}", f"1, 2, 3{END}"]
    assert example.trained_tokens == len(tokenizer("Hello, how can I help?1, 2, 3").input_ids) + 2
    # The whole conversation is the template's own rendering, tokenized once.
    rendered = tokenizer.apply_chat_template(
        conversation("Hi!", "Hello, how can I help?", "Count to 3.", "1, 2, 3")["messages"], tokenize=False
    )
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False).input_ids


def test_weight_0_assistant_messages_are_not_labelled(tokenizer):
    example = tokenize_example(
        tokenizer, conversation("Hi!", "Context only.", "Count to 3.", "1, 2, 3", weights=(0, 1))
    )
    assert labelled_spans(tokenizer, example) == [f"1, 2, 3{END}"]
    assert "Context only." in tokenizer.decode(example.input_ids)


def test_example_without_system_message_gets_the_templates_default_and_right_labels(tokenizer):
    example = tokenize_example(tokenizer, conversation("Hi!", "Hello!", system=None))

    text = tokenizer.decode(example.input_ids)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}{END}")
    assert labelled_spans(tokenizer, example) == [f"Hello!{END}"]


def test_first_token_is_never_a_target(tokenizer):
    example = tokenize_example(tokenizer, conversation("Hi!", "Hello!"))
    assert example.labels[0] == IGNORE_INDEX


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function.name') | join(', ') }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "<tool_call>{{ call.function.name }} {{ call.function.arguments | tojson }}</tool_call>{% endfor %}{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tools_and_tool_calls_reach_the_template(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer.chat_template = TOOLS_TEMPLATE
    example = {
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
            {"role": "assistant", "content": "It is -3 C in Oslo."},
        ],
    }
    tokenized = tokenize_example(tokenizer, example)

    assert "Tools: get_weather" in tokenizer.decode(tokenized.input_ids)
    # OpenAI's JSON-string arguments are given to the template as an object.
    assert labelled_spans(tokenizer, tokenized) == [
        f'<tool_call>get_weather {{"city": "Oslo"}}</tool_call>{END}',
        f"It is -3 C in Oslo.{END}",
    ]


def test_a_template_that_is_not_prefix_consistent_is_refused(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    # Renders the final message differently from earlier ones (like templates that
    # drop the reasoning of earlier turns): the labels could not be located.
    tokenizer.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "{% if loop.last %} (last){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix"):
        tokenize_example(tokenizer, conversation("Hi!", "Hello!", "Bye", "Bye!"))


def test_an_assistant_message_first_is_refused_with_a_clear_error(tokenizer):
    examples = [conversation("Hi!", "Hello!"), {"messages": [{"role": "assistant", "content": "Hi"}]}]
    with pytest.raises(ValueError, match="example 2: assistant message 1 is the first message"):
        tokenize_dataset(tokenizer, examples)


# ------------------------------------------------------------------- truncation


def test_truncate_keeps_the_first_tokens(tokenizer):
    example = tokenize_example(tokenizer, repeat_example("apple", 30))
    length = len(example.input_ids)

    same, was_truncated = truncate(example, length)
    assert same is example and not was_truncated

    short, was_truncated = truncate(example, length - 10)
    assert was_truncated
    assert short.input_ids == example.input_ids[: length - 10]
    assert short.labels == example.labels[: length - 10]
    # The cut takes the end of the answer (and the template's newline after it).
    assert short.trained_tokens == example.trained_tokens - 9


def test_tokenize_dataset_keeps_order(tokenizer):
    examples = [repeat_example("pear", n) for n in (1, 5, 3)]
    lengths = [len(e.input_ids) for e in tokenize_dataset(tokenizer, examples)]
    assert lengths[0] < lengths[2] < lengths[1]


# ---------------------------------------------------------------------- batches


def varied_examples(tokenizer, counts=(1, 9, 4, 2, 7, 3)) -> list[TokenizedExample]:
    return tokenize_dataset(tokenizer, [repeat_example(word, n) for word, n in zip(
        ("apple", "pear", "plum", "fig", "kiwi", "lime"), counts)])


def find_in_rows(batch, example: TokenizedExample) -> tuple[int, int]:
    """(row, start) where `example` sits in a packed batch, starting at position 0."""
    for row in range(batch["input_ids"].shape[0]):
        ids = batch["input_ids"][row].tolist()
        for start in range(len(ids) - len(example.input_ids) + 1):
            if batch["position_ids"][row, start] == 0 and ids[start : start + len(example.input_ids)] == example.input_ids:
                return row, start
    raise AssertionError("example not found in the batch")


def test_pack_batch_packs_rows_first_fit_decreasing(tokenizer):
    examples = varied_examples(tokenizer)
    lengths = sorted(len(e) for e in examples)
    max_seq_length = lengths[-1] + lengths[0] + 2  # the longest plus the shortest fit in one row
    batch = pack_batch(examples, max_seq_length, tokenizer.pad_token_id, packing=True)

    rows, width = batch["input_ids"].shape
    assert "attention_mask" not in batch  # transformers derives the mask from position_ids
    assert batch["labels"].shape == batch["position_ids"].shape == (rows, width)
    assert width <= max_seq_length
    assert rows < len(examples)
    assert rows >= -(-sum(lengths) // max_seq_length)
    assert batch["num_tokens"] == sum(lengths)
    assert batch["num_trained_tokens"] == sum(e.trained_tokens for e in examples)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == batch["num_trained_tokens"]

    seen = set()
    for example in examples:
        row, start = find_in_rows(batch, example)
        end = start + len(example)
        assert batch["labels"][row, start:end].tolist() == example.labels
        assert batch["position_ids"][row, start:end].tolist() == list(range(len(example)))
        assert (start, end) in batch["segments"][row]
        seen.add((row, start))
    assert len(seen) == len(examples)
    assert sum(len(row) for row in batch["segments"]) == len(examples)
    for row_segments in batch["segments"]:  # each row's examples from 0, one after another
        assert [start for start, _ in row_segments] == [0] + [end for _, end in row_segments[:-1]]
    # Padding: pad tokens, no labels, positions restarting at 0.
    for row in range(rows):
        used = sum(len(e) for e in examples if find_in_rows(batch, e)[0] == row)
        assert used <= max_seq_length
        tail = width - used
        assert batch["input_ids"][row, used:].tolist() == [tokenizer.pad_token_id] * tail
        assert batch["labels"][row, used:].tolist() == [IGNORE_INDEX] * tail
        assert batch["position_ids"][row, used:].tolist() == list(range(tail))


def test_pack_batch_without_packing_pads_each_example(tokenizer):
    examples = varied_examples(tokenizer)
    batch = pack_batch(examples, 128, tokenizer.pad_token_id, packing=False)

    width = max(len(e) for e in examples)
    assert batch["input_ids"].shape == (len(examples), width)
    for row, example in enumerate(examples):
        size = len(example)
        assert batch["input_ids"][row, :size].tolist() == example.input_ids
        assert batch["labels"][row, :size].tolist() == example.labels
        assert batch["labels"][row, size:].tolist() == [IGNORE_INDEX] * (width - size)
        assert batch["attention_mask"][row].tolist() == [1] * size + [0] * (width - size)
        assert batch["segments"][row] == ((0, size),)
    assert batch["num_tokens"] == sum(len(e) for e in examples)


def test_pack_batch_refuses_examples_longer_than_max_seq_length(tokenizer):
    examples = varied_examples(tokenizer)
    with pytest.raises(ValueError, match="max_seq_length"):
        pack_batch(examples, 10, tokenizer.pad_token_id, packing=True)


def logits_alone(model, example: TokenizedExample) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]


def test_packed_examples_do_not_attend_to_each_other(tokenizer, tiny_model, one_thread):
    """transformers 5 (masking_utils.find_packed_sequence_indices) turns
    restarting position_ids into a block-diagonal causal mask with sdpa when
    attention_mask is None and there is no cache: each example's logits in a
    packed row equal running it alone."""
    examples = varied_examples(tokenizer)
    max_seq_length = sum(sorted(len(e) for e in examples)[-3:])
    batch = pack_batch(examples, max_seq_length, tokenizer.pad_token_id, packing=True)
    assert batch["input_ids"].shape[0] < len(examples)  # really packed

    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    for example in examples:
        row, start = find_in_rows(batch, example)
        torch.testing.assert_close(packed[row, start : start + len(example)], logits_alone(tiny_model, example),
                                   atol=1e-5, rtol=1e-5)

    # Control: the same rows with one running position range mix the examples.
    running = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    with torch.no_grad():
        mixed = tiny_model(input_ids=batch["input_ids"], position_ids=running, use_cache=False).logits
    later = next(e for e in examples if find_in_rows(batch, e)[1] > 0)
    row, start = find_in_rows(batch, later)
    assert not torch.allclose(mixed[row, start : start + len(later)], logits_alone(tiny_model, later), atol=1e-3)


@pytest.mark.parametrize("packing", [True, False])
def test_segment_attention_gives_each_example_its_logits_alone(tokenizer, tiny_model, tiny_model_dir, one_thread,
                                                              packing):
    """worker/training/attention.py: each example attends within its own
    segment of the row, without a mask; the same logits as running it alone,
    packed or padded, and the padding after the last example stays finite."""
    from worker.training.attention import register_segment_attention, segment_attention_supported

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=register_segment_attention()
    ).eval()
    assert segment_attention_supported(model.config)
    examples = varied_examples(tokenizer)
    batch = pack_batch(examples, sum(sorted(len(e) for e in examples)[-3:]), tokenizer.pad_token_id, packing=packing)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       segments=batch["segments"], use_cache=False).logits
        with pytest.raises(ValueError, match="segments"):  # never silently attends across examples
            model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    assert torch.isfinite(logits).all()
    for example in examples:
        row, start = find_in_rows(batch, example)
        torch.testing.assert_close(logits[row, start : start + len(example)], logits_alone(tiny_model, example),
                                   atol=1e-5, rtol=1e-5)


def test_segment_attention_only_for_plain_causal_architectures():
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    from worker.training.attention import segment_attention_supported

    assert segment_attention_supported(LlamaConfig())
    assert segment_attention_supported(MistralConfig(sliding_window=None))
    assert not segment_attention_supported(MistralConfig(sliding_window=4096))
    assert segment_attention_supported(Qwen2Config(use_sliding_window=False))
    assert not segment_attention_supported(Gemma2Config())  # soft-capping, sliding layers


def test_packing_needs_the_cache_off(tokenizer, tiny_model):
    """With use_cache=True (the config default) transformers builds a cache and
    then skips packed-sequence detection: why the recipe turns the cache off."""
    examples = varied_examples(tokenizer)[:2]
    batch = pack_batch(examples, 256, tokenizer.pad_token_id, packing=True)
    assert batch["input_ids"].shape[0] == 1
    second = next(e for e in examples if find_in_rows(batch, e)[1] > 0)
    row, start = find_in_rows(batch, second)
    with torch.no_grad():
        cached = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
        uncached = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    alone = logits_alone(tiny_model, second)
    assert not torch.allclose(cached[row, start : start + len(second)], alone, atol=1e-3)
    torch.testing.assert_close(uncached[row, start : start + len(second)], alone, atol=1e-5, rtol=1e-5)


def test_padded_rows_give_the_same_logits_as_examples_alone(tokenizer, tiny_model, one_thread):
    examples = varied_examples(tokenizer)
    batch = pack_batch(examples, 128, tokenizer.pad_token_id, packing=False)
    with torch.no_grad():
        padded = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], use_cache=False).logits
    for row, example in enumerate(examples):
        torch.testing.assert_close(padded[row, : len(example)], logits_alone(tiny_model, example), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------ text and prompt/completion


@pytest.fixture(scope="module")
def bos_tokenizer(smollm2_tokenizer_dir):
    """SmolLM2's tokenizer made to add a BOS token, as Llama's does."""
    from tokenizers import processors

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
    assert tokenizer("Hi")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


def test_a_text_example_trains_every_token_and_ends_with_eos(tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    example = tokenize_example(tokenizer, {"text": text})
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert example.input_ids == [*ids, tokenizer.eos_token_id]  # SmolLM2 adds no BOS
    assert example.labels == [IGNORE_INDEX, *example.input_ids[1:]]  # nothing precedes the first token
    assert labelled_spans(tokenizer, example) == [tokenizer.decode(ids[1:]) + END]


def test_a_text_example_keeps_the_tokenizers_bos(bos_tokenizer):
    example = tokenize_example(bos_tokenizer, {"text": "Hello world"})
    ids = bos_tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert example.input_ids == [bos_tokenizer.bos_token_id, *ids, bos_tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX, *ids, bos_tokenizer.eos_token_id]
    assert example.trained_tokens == len(ids) + 1


def test_a_prompt_completion_example_trains_only_the_completion_and_eos(tokenizer):
    example = tokenize_example(tokenizer, {"prompt": "Translate to French: cat ->", "completion": " chat"})
    prompt_ids = tokenizer("Translate to French: cat ->", add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(" chat", add_special_tokens=False)["input_ids"]
    # Plain concatenation, no chat template.
    assert example.input_ids == [*prompt_ids, *completion_ids, tokenizer.eos_token_id]
    assert labelled_spans(tokenizer, example) == [f" chat{END}"]
    assert example.trained_tokens == len(completion_ids) + 1
    assert "<|im_start|>" not in tokenizer.decode(example.input_ids)


def test_a_prompt_completion_example_with_bos_and_an_empty_prompt(bos_tokenizer):
    example = tokenize_example(bos_tokenizer, {"prompt": "", "completion": "Once upon a time"})
    completion_ids = bos_tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    assert example.input_ids == [bos_tokenizer.bos_token_id, *completion_ids, bos_tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX, *completion_ids, bos_tokenizer.eos_token_id]
    with_prompt = tokenize_example(bos_tokenizer, {"prompt": "Q:", "completion": " A"})
    assert with_prompt.input_ids[0] == bos_tokenizer.bos_token_id
    assert with_prompt.input_ids.count(bos_tokenizer.bos_token_id) == 1  # only the prompt's


def test_a_tokenizer_that_appends_eos_ends_the_sequence_once(smollm2_tokenizer_dir):
    from tokenizers import processors

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A {tokenizer.eos_token}",
        special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id), (tokenizer.eos_token, tokenizer.eos_token_id)])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    text = tokenize_example(tokenizer, {"text": "Hello world"})
    assert text.input_ids[0] == bos and text.input_ids.count(eos) == 1 and text.input_ids[-1] == eos
    pair = tokenize_example(tokenizer, {"prompt": "Q:", "completion": " A"})
    assert pair.input_ids.count(eos) == 1 and pair.input_ids[-1] == eos  # not after the prompt
    assert labelled_spans(tokenizer, pair) == [f" A{END}"]


def test_a_preference_pair_is_not_a_supervised_example(tokenizer):
    pair = {"input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="trained by the DPO method"):
        tokenize_example(tokenizer, pair)
    with pytest.raises(ValueError, match="example 2: an example with keys"):
        tokenize_dataset(tokenizer, [{"text": "fine"}, {"question": "?"}])


def test_text_and_prompt_completion_examples_pack_together_with_their_labels(tokenizer):
    examples = tokenize_dataset(tokenizer, [{"text": "one two three"}, {"prompt": "a", "completion": " b"},
                                            {"text": "four"}])
    batch = pack_batch(examples, 64, tokenizer.pad_token_id, packing=True)
    assert batch["input_ids"].shape[0] == 1  # one row
    assert batch["num_trained_tokens"] == sum(example.trained_tokens for example in examples)
    assert [end - start for start, end in batch["segments"][0]] == sorted(map(len, examples), reverse=True)


def _jsonl(lines: list[dict]) -> list[bytes]:
    import json

    return [b"".join(json.dumps(line).encode() + b"\n" for line in lines)]


@pytest.mark.parametrize(("lines", "format_"), [
    ([{"text": f"document {i}"} for i in range(20)], "text"),
    ([{"prompt": f"q{i}", "completion": f" a{i}", **({"split": "TEST"} if i < 3 else {})} for i in range(20)],
     "prompt_completion"),
    ([conversation(f"q{i}", f"a{i}") for i in range(20)], "chat"),
])
def test_dataset_stats_record_the_format(tokenizer, lines, format_):
    data = load_split_data(_jsonl(lines), 0)
    assert data.format == format_
    assert len(data.train) + len(data.eval) == 20
    assert all("split" not in example for example in data.train + data.eval)
    stats, summary = dataset_stats(tokenizer, data)
    assert summary["format"] == format_
    assert summary["train_examples"] == stats.train_examples == len(data.train)
    assert summary["train_tokens"] == sum(len(tokenize_example(tokenizer, e)) for e in data.train)


def test_load_split_data_reads_preference_files_and_refuses_a_validation_file_of_another_format():
    pairs = [{"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
              "preferred_output": [{"role": "assistant", "content": "yes"}],
              "non_preferred_output": [{"role": "assistant", "content": "no"}], "split": "TRAIN"}
             for i in range(10)]
    data = load_split_data(_jsonl(pairs), 0)
    assert (data.format, len(data.train), len(data.eval)) == ("preference", 10, 0)
    assert "split" not in data.train[0] and data.train[0]["preferred_output"][0]["content"] == "yes"
    with pytest.raises(ValueError, match="the validation file is in the text format but the training file in the "
                                         "preference format"):
        load_split_data(_jsonl(pairs), 0, _jsonl([{"text": "x"}]))


def test_a_long_text_becomes_rows_that_train_every_token_once():
    from worker.training.data import IGNORE_INDEX, TokenizedExample, split_text

    ids = list(range(100, 125))  # 25 tokens
    example = TokenizedExample(ids, [IGNORE_INDEX, *ids[1:]])
    rows = split_text(example, 8)
    assert all(len(row) <= 8 for row in rows)
    # Each row after the first starts with the previous row's last token, as context only.
    for previous, row in zip(rows, rows[1:]):
        assert row.input_ids[0] == previous.input_ids[-1] and row.labels[0] == IGNORE_INDEX
    trained = [label for row in rows for label in row.labels if label != IGNORE_INDEX]
    assert trained == ids[1:]
    assert split_text(TokenizedExample(ids[:8], [IGNORE_INDEX, *ids[1:8]]), 8) == [TokenizedExample(ids[:8], [IGNORE_INDEX, *ids[1:8]])]


def test_the_recipe_splits_long_texts_but_truncates_other_long_examples(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    from worker.training.recipe import tokenize_and_truncate

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    text = {"text": " ".join(f"word{i}" for i in range(200))}
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": text["text"]}]}
    rows, truncated = tokenize_and_truncate(tokenizer, [text, chat], 64)
    assert truncated == 1  # the chat example only
    text_rows = rows[:-1]
    assert len(text_rows) > 1 and all(len(row) <= 64 for row in rows)
    whole = tokenize_and_truncate(tokenizer, [text], 100_000)[0][0]
    assert sum(row.trained_tokens for row in text_rows) == whole.trained_tokens
