"""The decode loop shared by concurrent requests (worker/inference/loop.py), on
the tiny Llama with two LoRA adapters. The yardstick, as for `generate`: a
request gets exactly what it gets alone, whenever it joins the running batch,
whoever its batch mates are, and whatever happens to them (cancelled, failed).
"""

import threading
from dataclasses import replace

import pytest
import torch

from worker.inference.batching import Handle
from worker.inference.budget import Budget, torch_threads
from worker.inference.generation import GenerationCancelled, GenerationRequest, generate
from worker.inference.loop import BACKGROUND, INTERACTIVE, DecodeLoop

WAIT = 60


def alone(handle: Handle, request: GenerationRequest):
    return generate(handle.model, handle.tokenizer, [request], eos_ids=handle.eos_ids)[0]


def make_loop(max_rows: int = 8, prefill_tokens: int = 4096) -> DecodeLoop:
    return DecodeLoop(lambda handle: Budget(max_rows=max_rows, prefill_tokens=prefill_tokens))


@pytest.fixture
def handle(peft_model, tokenizer, eos_ids) -> Handle:
    return Handle(peft_model, tokenizer, eos_ids, "cpu", threading.Lock())


@pytest.fixture
def plain_handle(plain_model, tokenizer, eos_ids) -> Handle:
    return Handle(plain_model, tokenizer, eos_ids, "cpu", threading.Lock())


@pytest.fixture
def forward_sizes(plain_model):
    """(rows, columns) of every forward the plain model runs."""
    sizes = []
    hook = plain_model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield sizes
    hook.remove()


def first_text(submission):
    """Blocks until the streamed submission has produced some text."""
    for _, text in submission.texts():
        if text:
            return text
    raise AssertionError("the submission ended without text")


def test_small_decode_steps_run_on_one_thread_and_prefills_on_all(plain_handle, prompts):
    # One thread where the budget measured it faster (few rows on a CPU); the process's count after.
    seen = []
    hook = plain_handle.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((tuple(kwargs["input_ids"].shape), torch.get_num_threads())),
        with_kwargs=True,
    )
    loop = DecodeLoop(lambda handle: Budget(max_rows=8, prefill_tokens=4096, single_thread_rows=2))
    try:
        with torch_threads(2):
            one = loop.submit(plain_handle, [GenerationRequest(prompts["long"], max_new_tokens=3, temperature=0)])
            assert one.wait(WAIT)
            three = loop.submit(plain_handle, [GenerationRequest(prompts[name], max_new_tokens=3, temperature=0)
                                               for name in ("long", "short", "multi")])
            assert three.wait(WAIT)
            assert torch.get_num_threads() == 2
    finally:
        hook.remove()
    prefills = [threads for (rows, columns), threads in seen if columns > 1]
    steps = {rows: threads for (rows, columns), threads in seen if columns == 1}
    assert prefills and set(prefills) == {2}
    assert steps == {1: 1, 3: 2}
    assert one.results()[0] == alone(plain_handle, GenerationRequest(prompts["long"], max_new_tokens=3, temperature=0))


def test_budget_threads_for_a_step():
    budget = Budget(max_rows=64, prefill_tokens=512, single_thread_rows=16)
    assert [budget.decode_threads(rows) for rows in (1, 16, 17, 64)] == [1, 1, None, None]
    assert Budget(max_rows=64, prefill_tokens=512).decode_threads(1) is None  # not measured: all threads
    with torch_threads(2):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        with torch_threads(None):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2


def test_rows_joining_a_running_batch_get_what_they_get_alone(handle, prompts):
    loop = make_loop()
    first = GenerationRequest(prompts["long"], adapter="A", max_new_tokens=24, temperature=0)
    running = loop.submit(handle, [first], streams=True)
    first_text(running)  # the first row is decoding: the others join it mid-way
    later = [
        GenerationRequest(prompts["short"], adapter=None, max_new_tokens=12, temperature=0),
        GenerationRequest(prompts["multi"], adapter="B", max_new_tokens=10, temperature=0),
        # Seeded sampling: the row's own generator, whoever its batch mates are.
        GenerationRequest(prompts["multi"], adapter="A", max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7),
        GenerationRequest(prompts["long"], adapter="B", max_new_tokens=8, temperature=0.8, seed=11),
    ]
    joined = [loop.submit(handle, [request], priority=priority)
              for request, priority in zip(later, [INTERACTIVE, BACKGROUND] * 2, strict=True)]
    assert all(submission.wait(WAIT) for submission in [running, *joined])
    assert running.results() == [alone(handle, first)]
    for submission, request in zip(joined, later, strict=True):
        assert submission.results() == [alone(handle, request)]
    another_seed = alone(handle, replace(later[2], seed=8))
    assert another_seed.token_ids != joined[2].results()[0].token_ids


def test_streamed_text_adds_up_to_the_result(handle, prompts):
    loop = make_loop()
    requests = [GenerationRequest(prompts["multi"], adapter="A", max_new_tokens=12, temperature=1.0, seed=3),
                GenerationRequest(prompts["long"], max_new_tokens=12, temperature=0, stop=("e",))]
    submission = loop.submit(handle, requests, streams=True)
    texts = {0: "", 1: ""}
    for index, text in submission.texts():
        texts[index] += text
    assert [texts[0], texts[1]] == [result.text for result in submission.results()]
    assert submission.results() == [alone(handle, request) for request in requests]


def test_cancelling_one_submission_leaves_the_others_alone(handle, prompts):
    loop = make_loop()
    requests = [GenerationRequest(prompts[name], adapter=adapter, max_new_tokens=30, temperature=0)
                for name, adapter in (("long", None), ("short", "A"), ("multi", "B"))]
    submissions = [loop.submit(handle, [request], streams=True) for request in requests]
    first_text(submissions[1])
    submissions[1].cancel()
    assert submissions[0].wait(WAIT) and submissions[2].wait(WAIT)
    with pytest.raises(GenerationCancelled):
        submissions[1].results()
    assert submissions[0].results() == [alone(handle, requests[0])]
    assert submissions[2].results() == [alone(handle, requests[2])]


def test_background_rows_stay_within_the_budget_and_chat_rows_go_first(plain_handle, prompts, forward_sizes):
    loop = make_loop(max_rows=2)
    background = [loop.submit(plain_handle, [GenerationRequest(prompts["short"], max_new_tokens=6, temperature=0)])
                  for _ in range(5)]
    assert all(submission.wait(WAIT) for submission in background)
    decode_rows = [rows for rows, columns in forward_sizes if columns == 1]
    assert max(decode_rows) == 2
    results = [submission.results()[0] for submission in background]
    assert all(result == results[0] for result in results)

    # A chat request joins a full batch of background rows (up to the margin) instead of waiting.
    forward_sizes.clear()
    long_rows = [loop.submit(plain_handle, [GenerationRequest(prompts["long"], max_new_tokens=40, temperature=0)],
                             streams=True) for _ in range(4)]
    first_text(long_rows[0])  # two run, two wait for room
    chat = loop.submit(plain_handle, [GenerationRequest(prompts["short"], max_new_tokens=3, temperature=0)],
                       priority=INTERACTIVE)
    assert chat.wait(WAIT)
    assert sum(not submission.done for submission in long_rows) >= 2, "the chat waited for the background rows"
    assert all(submission.wait(WAIT) for submission in long_rows)
    assert max(rows for rows, columns in forward_sizes if columns == 1) == 3


def test_a_long_prompt_is_prefilled_in_slices_between_decode_steps(plain_handle, prompts, forward_sizes):
    loop = make_loop(prefill_tokens=8)
    first = GenerationRequest(prompts["short"], max_new_tokens=40, temperature=0)
    running = loop.submit(plain_handle, [first], streams=True)
    first_text(running)
    long_request = GenerationRequest(prompts["long"], max_new_tokens=5, temperature=0)
    assert len(long_request.prompt_ids) > 3 * 8
    mark = len(forward_sizes)
    late = loop.submit(plain_handle, [long_request])
    assert late.wait(WAIT) and running.wait(WAIT)
    after = forward_sizes[mark:]
    slices = [index for index, (rows, columns) in enumerate(after) if columns > 1]
    assert sum(after[index][1] for index in slices) == len(long_request.prompt_ids)
    assert all(after[index][1] <= 8 for index in slices)
    # Between two slices of the long prompt, the running row took a token.
    assert all((1, 1) in after[a + 1 : b] for a, b in zip(slices, slices[1:]))
    assert running.results() == [alone(plain_handle, first)]
    assert late.results()[0].token_ids == alone(plain_handle, long_request).token_ids


def test_a_failed_forward_fails_the_rows_in_flight_and_the_loop_goes_on(plain_handle, plain_model, prompts):
    loop = make_loop()
    failing = {"now": True}

    def fail_once(module, args, kwargs):
        if failing["now"]:
            failing["now"] = False
            raise RuntimeError("out of something")

    hook = plain_model.register_forward_pre_hook(fail_once, with_kwargs=True)
    try:
        request = GenerationRequest(prompts["short"], max_new_tokens=4, temperature=0)
        failed = loop.submit(plain_handle, [request])
        assert failed.wait(WAIT)
        with pytest.raises(RuntimeError, match="out of something"):
            failed.results()
        again = loop.submit(plain_handle, [request])
        assert again.wait(WAIT) and again.results() == [alone(plain_handle, request)]
    finally:
        hook.remove()


def test_calls_run_on_the_loop_thread_and_requests_are_checked_first(plain_handle, prompts):
    loop = make_loop()
    assert loop.call(lambda: threading.current_thread().name) == "decode-loop"
    with pytest.raises(ValueError, match="no adapters"):
        loop.submit(plain_handle, [GenerationRequest(prompts["short"], adapter="A")])
    with pytest.raises(ZeroDivisionError):
        loop.call(lambda: 1 / 0)
    nothing = loop.submit(plain_handle, [GenerationRequest(prompts["short"], max_new_tokens=0)])
    assert nothing.wait(WAIT) and nothing.results()[0].finish_reason == "length"


def test_rows_are_grouped_by_adapter_in_the_batch(handle, prompts, peft_model):
    seen = []
    base = peft_model.get_base_model()
    hook = base.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True)
    loop = make_loop()
    orders = []
    original = loop._models  # noqa: SLF001 - inspected below through the batch of the one model
    try:
        requests = [GenerationRequest(prompts["short"], adapter=adapter, max_new_tokens=8, temperature=0)
                    for adapter in ("B", None, "A", "B", None, "A")]
        submissions = [loop.submit(handle, [request]) for request in requests]

        def adapters_in_batch():
            for model_rows in original.values():
                orders.append([row.request.adapter or "" for row in model_rows.batch.rows])

        for _ in range(3):
            loop.call(adapters_in_batch)
        assert all(submission.wait(WAIT) for submission in submissions)
    finally:
        hook.remove()
    assert all(order == sorted(order) for order in orders)
    assert [s.results()[0] for s in submissions] == [alone(handle, request) for request in requests]
    assert torch.get_num_threads() == 1
