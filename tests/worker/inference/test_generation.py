"""Batched generation and reference losses on a tiny random Llama (CPU, fp32)
with two LoRA adapters, mixed in one batch. The yardstick throughout: a request
in a batch gets exactly what it gets alone.

Everything runs on one thread so that equal inputs give bit-equal logits.
"""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.worker.inference.conftest import LONG, MULTI_TURN, SHORT
from worker.inference.batching import final_text_length as _final_text_length
from worker.inference.generation import (
    GenerationCancelled,
    GenerationRequest,
    end_of_turn_ids,
    generate,
    reference_losses,
    render_prompt,
)
from worker.training.data import IGNORE_INDEX, tokenize_example

def alone(model, tokenizer, request, eos_ids):
    return generate(model, tokenizer, [request], eos_ids=eos_ids)[0]


# ------------------------------------------------------------------ prompts


def test_render_prompt_opens_the_assistant_turn_without_adding_special_tokens_twice(tokenizer):
    ids = render_prompt(tokenizer, [*MULTI_TURN[:2], {"role": "user", "content": None}])
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n") and text.count("<|im_start|>system") == 1
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_end_of_turn_ids_joins_tokenizer_and_generation_config():
    tokenizer = SimpleNamespace(eos_token_id=2)
    assert end_of_turn_ids(tokenizer, SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[2, 7]))) == {2, 7}
    assert end_of_turn_ids(tokenizer, SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=9))) == {2, 9}
    assert end_of_turn_ids(tokenizer, SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))) == {2}


# --------------------------------------------------------- batch = alone


def test_mixed_adapter_batch_equals_each_request_alone(peft_model, tokenizer, eos_ids, prompts):
    requests = [
        GenerationRequest(prompts["short"], adapter=None, max_new_tokens=12, temperature=0),
        GenerationRequest(prompts["long"], adapter="A", max_new_tokens=8, temperature=0),
        GenerationRequest(prompts["multi"], adapter="B", max_new_tokens=12, temperature=0),
        GenerationRequest(prompts["long"], adapter=None, max_new_tokens=3, temperature=0),
        GenerationRequest(prompts["short"], adapter="A", max_new_tokens=10, temperature=0),
    ]
    batched = generate(peft_model, tokenizer, requests, eos_ids=eos_ids)

    assert batched == [alone(peft_model, tokenizer, request, eos_ids) for request in requests]
    assert [len(result.token_ids) for result in batched] == [12, 8, 12, 3, 10]
    # A model that repeats one token would make the comparison above weak.
    assert all(len(set(result.token_ids)) > 2 for result in batched if len(result.token_ids) > 3)


def test_plain_model_batch_equals_each_request_alone(plain_model, tokenizer, eos_ids, prompts):
    requests = [GenerationRequest(prompts[name], max_new_tokens=10, temperature=0)
                for name in ("long", "short", "multi")]
    batched = generate(plain_model, tokenizer, requests, eos_ids=eos_ids)
    assert batched == [alone(plain_model, tokenizer, request, eos_ids) for request in requests]


def test_the_output_projection_gets_contiguous_rows_and_the_same_answers(plain_model, tokenizer, prompts):
    # logits_to_keep=1 slices each row's last prompt position out of a prefill: a strided
    # view, which sends a CPU F.linear down a slow path (bf16: 170x); the rows are copied first.
    seen = []
    head = plain_model.get_output_embeddings()
    watcher = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    try:
        requests = [GenerationRequest(prompts[name], max_new_tokens=4, temperature=0) for name in ("long", "short")]
        batched = generate(plain_model, tokenizer, requests, eos_ids=set())  # no end of turn: 4 tokens each
    finally:
        watcher.remove()
    assert len(seen) >= 4 and all(seen)
    with torch.inference_mode():  # the first token is the argmax of the whole prompt's forward
        full = plain_model(input_ids=torch.tensor([prompts["long"]])).logits[0, -1]
    assert batched[0].token_ids[0] == int(full.argmax())


def test_adapters_change_the_output_and_base_rows_match_the_plain_model(
    peft_model, plain_model, tokenizer, eos_ids, prompts
):
    requests = [GenerationRequest(prompts["short"], adapter=name, max_new_tokens=8, temperature=0)
                for name in (None, "A", "B")]
    base, with_a, with_b = (result.token_ids for result in generate(peft_model, tokenizer, requests, eos_ids=eos_ids))
    assert base != with_a and base != with_b and with_a != with_b
    assert base == alone(plain_model, tokenizer, requests[0], eos_ids).token_ids


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(peft_model, tokenizer, eos_ids, prompts):
    request = GenerationRequest(prompts["multi"], adapter="A", max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    first = alone(peft_model, tokenizer, request, eos_ids)
    assert alone(peft_model, tokenizer, request, eos_ids) == first

    others = [
        GenerationRequest(prompts["long"], adapter="B", max_new_tokens=4, temperature=1.5, seed=1),
        GenerationRequest(prompts["short"], adapter=None, max_new_tokens=10, temperature=0.7, top_p=0.5, seed=None),
        GenerationRequest(prompts["long"], adapter="A", max_new_tokens=6, temperature=0),
    ]
    without_top_p = GenerationRequest(prompts["short"], adapter="B", max_new_tokens=8, temperature=0.8, seed=11)
    batch = generate(peft_model, tokenizer, [others[0], request, *others[1:], without_top_p], eos_ids=eos_ids)
    assert batch[1] == first
    assert batch[-1] == alone(peft_model, tokenizer, without_top_p, eos_ids)

    another_seed = alone(peft_model, tokenizer, replace(request, seed=8), eos_ids)
    assert another_seed.token_ids != first.token_ids


def test_temperature_zero_is_deterministic_whatever_the_seed(plain_model, tokenizer, eos_ids, prompts):
    request = GenerationRequest(prompts["long"], max_new_tokens=8, temperature=0)
    results = [alone(plain_model, tokenizer, replace(request, seed=seed), eos_ids) for seed in (None, None, 1, 2)]
    assert all(result == results[0] for result in results)


def test_a_tiny_top_p_is_greedy(plain_model, tokenizer, eos_ids, prompts):
    request = GenerationRequest(prompts["long"], max_new_tokens=8, temperature=0)
    greedy = alone(plain_model, tokenizer, request, eos_ids)
    nucleus_of_one = alone(plain_model, tokenizer, replace(request, temperature=1.0, top_p=1e-6), eos_ids)
    assert nucleus_of_one.token_ids == greedy.token_ids


# ------------------------------------------------------------ finishing


def test_max_new_tokens_finishes_with_length(plain_model, tokenizer, eos_ids, prompts):
    request = GenerationRequest(prompts["short"], max_new_tokens=5, temperature=0)
    result = alone(plain_model, tokenizer, request, eos_ids)
    assert (len(result.token_ids), result.finish_reason) == (5, "length")
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)

    nothing = alone(plain_model, tokenizer, replace(request, max_new_tokens=0), eos_ids)
    assert (nothing.token_ids, nothing.text, nothing.finish_reason) == ([], "", "length")


def test_an_end_of_turn_token_finishes_with_stop_and_is_left_out(plain_model, tokenizer, eos_ids, prompts):
    request = GenerationRequest(prompts["long"], max_new_tokens=10, temperature=0)
    free = alone(plain_model, tokenizer, request, eos_ids)
    ender = free.token_ids[3]  # pretend the fourth generated token ends the turn
    result = alone(plain_model, tokenizer, request, {*eos_ids, ender})
    assert result.token_ids == free.token_ids[: free.token_ids.index(ender)]
    assert result.finish_reason == "stop"


def test_a_stop_string_cuts_the_text_and_finishes_with_stop(plain_model, tokenizer, eos_ids, prompts):
    request = GenerationRequest(prompts["multi"], max_new_tokens=12, temperature=0)
    free = alone(plain_model, tokenizer, request, eos_ids)
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    cut_at = free.text.index(stop)

    stopped = alone(plain_model, tokenizer, replace(request, stop=("never seen", stop)), eos_ids)
    assert stopped.text == free.text[:cut_at]
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < len(free.token_ids)
    assert free.token_ids[: len(stopped.token_ids)] == stopped.token_ids

    unseen = alone(plain_model, tokenizer, replace(request, stop=("never seen",)), eos_ids)
    assert unseen == free


def test_streamed_deltas_add_up_to_each_text(peft_model, tokenizer, eos_ids, prompts):
    free = alone(peft_model, tokenizer, GenerationRequest(prompts["long"], max_new_tokens=12, temperature=0), eos_ids)
    requests = [
        GenerationRequest(prompts["long"], max_new_tokens=12, temperature=0, stop=(free.text[-6:-2],)),
        # A stop string that starts like the text but never completes: its prefix is held back, then released.
        GenerationRequest(prompts["long"], max_new_tokens=12, temperature=0, stop=(free.text[:4] + "\0",)),
        GenerationRequest(prompts["multi"], adapter="A", max_new_tokens=9, temperature=1.0, seed=3),
        GenerationRequest(prompts["short"], adapter="B", max_new_tokens=0),
    ]
    deltas: dict[int, list[str]] = {index: [] for index in range(len(requests))}
    results = generate(peft_model, tokenizer, requests, eos_ids=eos_ids,
                       on_text=lambda index, delta: deltas[index].append(delta))

    assert ["".join(deltas[index]) for index in range(len(requests))] == [result.text for result in results]
    assert results[0].finish_reason == "stop" and results[0].text == free.text[: free.text.index(free.text[-6:-2])]
    assert results[1] == free
    assert len(deltas[2]) > 1  # streamed as it went, not only at the end
    assert all(delta for row in deltas.values() for delta in row)


def test_text_that_may_still_change_is_held_back():
    assert _final_text_length("abc\ufffd", ()) == 3
    assert _final_text_length("abc\ufffd\ufffd", ()) == 3
    assert _final_text_length("hello wor", ("world",)) == 6
    assert _final_text_length("hello wor", ("xyz", "or!")) == 7
    assert _final_text_length("hello", ("world",)) == 5
    assert _final_text_length("ab", ("abc",)) == 0


def test_should_stop_cancels_before_the_next_forward(plain_model, tokenizer, eos_ids, prompts):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(GenerationCancelled):
        generate(plain_model, tokenizer, [GenerationRequest(prompts["short"], max_new_tokens=10)], eos_ids=eos_ids,
                 should_stop=should_stop)
    assert len(calls) == 3


def test_finished_rows_leave_the_batch(plain_model, tokenizer, eos_ids, prompts):
    batch_sizes = []
    hook = plain_model.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        requests = [GenerationRequest(prompts["short"], max_new_tokens=2, temperature=0)] * 3
        requests.append(GenerationRequest(prompts["long"], max_new_tokens=20, temperature=0))
        results = generate(plain_model, tokenizer, requests, eos_ids=eos_ids)
    finally:
        hook.remove()
    assert [len(result.token_ids) for result in results] == [2, 2, 2, 20]
    # Prompt and second token with all four rows; the 18 tokens after that with the long one only.
    assert batch_sizes == [4, 4] + [1] * 18


# ---------------------------------------------------------------- errors


def test_adapter_requests_need_a_peft_model_with_that_adapter(plain_model, peft_model, tokenizer, eos_ids, prompts):
    with pytest.raises(ValueError, match="no adapters"):
        generate(plain_model, tokenizer, [GenerationRequest(prompts["short"], adapter="A")], eos_ids=eos_ids)
    with pytest.raises(ValueError, match="'C' is not loaded"):
        generate(peft_model, tokenizer, [GenerationRequest(prompts["short"], adapter="C")], eos_ids=eos_ids)
    with pytest.raises(ValueError, match="stop strings"):
        generate(plain_model, tokenizer, [GenerationRequest(prompts["short"], stop=tuple("abcde"))], eos_ids=eos_ids)
    with pytest.raises(ValueError, match="adapter 'A'"):
        reference_losses(plain_model, tokenizer, [(SHORT, "Hello")], adapter="A")


# ------------------------------------------------------- reference losses


def manual_reference_loss(model, tokenizer, prompt_messages, reference) -> tuple[float, int]:
    """One example, no batching: the loss over the tokens training labels."""
    messages = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt_messages]
    example = tokenize_example(tokenizer, {"messages": [*messages, {"role": "assistant", "content": reference}]})
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
    labels = torch.tensor(example.labels)
    loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
    return loss.item(), int((labels != IGNORE_INDEX).sum())


ITEMS = [
    (LONG, "Mild, with some rain: bring a light coat."),
    (SHORT, "Hello!"),
    (MULTI_TURN, "An apple."),
]


def test_reference_losses_equal_one_example_at_a_time(plain_model, tokenizer):
    losses = reference_losses(plain_model, tokenizer, ITEMS, adapter=None, batch_size=2)
    expected = [manual_reference_loss(plain_model, tokenizer, prompt, reference) for prompt, reference in ITEMS]
    assert [count for _, count in losses] == [count for _, count in expected]
    assert [loss for loss, _ in losses] == pytest.approx([loss for loss, _ in expected], rel=1e-5)
    # The reference and its end-of-turn token, never the earlier assistant turn.
    assert losses[2][1] == len(tokenizer("An apple.", add_special_tokens=False)["input_ids"]) + 1


def test_reference_losses_follow_the_adapter(peft_model, plain_model, tokenizer):
    base = reference_losses(peft_model, tokenizer, ITEMS, adapter=None)
    with_a = reference_losses(peft_model, tokenizer, ITEMS, adapter="A")
    plain = reference_losses(plain_model, tokenizer, ITEMS, adapter=None)
    assert [loss for loss, _ in base] == pytest.approx([loss for loss, _ in plain], rel=1e-5)
    assert all(abs(a - b) > 1e-3 for (a, _), (b, _) in zip(with_a, base, strict=True))
    assert peft_model.active_adapter == "A"  # so a plain forward below uses adapter A
    expected = [manual_reference_loss(peft_model, tokenizer, prompt, reference) for prompt, reference in ITEMS]
    assert [loss for loss, _ in with_a] == pytest.approx([loss for loss, _ in expected], rel=1e-5)
