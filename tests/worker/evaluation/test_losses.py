"""The loss of text and prompt/completion references, on the tiny model:
exactly the tokens training trains on, scored as one forward pass would."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker.evaluation.losses import example_losses
from worker.training.data import tokenize_example


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def direct_loss(model, tokenizer, example: dict) -> tuple[float, int]:
    """One example alone, no padding: the summed loss of its trained tokens."""
    tokenized = tokenize_example(tokenizer, example)
    with torch.inference_mode():
        logits = model(torch.tensor([tokenized.input_ids])).logits[0]
    labels = torch.tensor(tokenized.labels)
    loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
    return loss.item(), tokenized.trained_tokens


def test_losses_are_those_of_the_trained_tokens_whatever_the_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = [{"text": "The cat sat on the mat."},
                {"prompt": "What sound does a cow make?", "completion": " Moo."},
                {"text": "A much longer document, with several sentences. It goes on and on and on."},
                {"prompt": "", "completion": "Once upon a time"}]
    expected = [direct_loss(model, tokenizer, example) for example in examples]
    for batch_size in (1, 3, 8):
        losses = example_losses(model, tokenizer, examples, adapter=None, batch_size=batch_size)
        assert [tokens for _, tokens in losses] == [tokens for _, tokens in expected]
        for (loss, _), (want, _) in zip(losses, expected, strict=True):
            assert loss == pytest.approx(want, rel=1e-4)
    # The prompt is context only: a completion's loss counts its own tokens and EOS.
    completion_tokens = len(tokenizer(" Moo.", add_special_tokens=False)["input_ids"]) + 1
    assert expected[1][1] == completion_tokens


def test_an_adapter_that_is_not_loaded_is_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="adapters but the model has none"):
        example_losses(model, tokenizer, [{"text": "x"}], adapter="ft-1")


def test_an_example_longer_than_the_context_is_scored_on_its_first_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    long_text = {"text": "one two three four five six seven eight nine ten"}
    first = tokenize_example(tokenizer, long_text).input_ids[:5]
    [(loss, tokens)] = example_losses(model, tokenizer, [long_text], adapter=None, max_length=5)
    assert tokens == 4  # five tokens, the first never a target
    assert loss == pytest.approx(_loss_of_ids(model, first), rel=1e-4)


def _loss_of_ids(model, ids: list[int]) -> float:
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
