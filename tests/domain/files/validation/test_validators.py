"""The streaming validators as a whole: feeding, finishing, batch file reports, validator_for."""

import pytest

from domain.files.validation import validators
from domain.files.validation.validators import BatchValidator, FineTuneValidator, validator_for
from tests.domain.files.helpers import good_examples, jsonl, request, validate


def test_finish_is_idempotent_and_feed_after_finish_fails():
    validator = FineTuneValidator()
    validator.feed(jsonl(good_examples(10)))
    first = validator.finish()
    assert validator.finish() is first
    with pytest.raises(RuntimeError):
        validator.feed(b"{}")


def test_valid_batch_file():
    items = [request("a"), request("b", model="m2"), request("c")]
    data = jsonl(items[:2], newline=b"\r\n") + b"\n" + jsonl(items[2:], trailing=False)
    result = validate(data, purpose="batch")
    assert result.ok, result.message()
    assert result.report == {
        "purpose": "batch", "lines": 4, "blank_lines": 1, "requests": 3,
        "models": {"gpt-4o-mini": 2, "m2": 1},
        "warnings": ["the requests use 2 different models; some batch services "
                     "(OpenAI's among them) accept only one model per file"],
    }
    assert result.message().startswith("The file is a valid batch file: 3 requests.")
    assert validate(data, chunk_size=3, purpose="batch") == result


def test_single_model_batch_has_no_warnings():
    report = validate(jsonl([request("x")]), purpose="batch").report
    assert report["requests"] == 1 and report["warnings"] == []


def test_batch_models_tracking_is_capped(monkeypatch):
    monkeypatch.setattr(validators, "MAX_TRACKED_MODELS", 2)
    items = [request(f"r{i}", model=f"m{i % 3}") for i in range(6)]
    report = validate(jsonl(items), purpose="batch").report
    assert report["models"] == {"m0": 2, "m1": 2}
    assert any("more than 2 distinct models" in w for w in report["warnings"])


def test_validator_for():
    assert isinstance(validator_for("fine-tune"), FineTuneValidator)
    assert validator_for("fine-tune", split_seed=9).split_seed == 9
    assert isinstance(validator_for("batch"), BatchValidator)
    with pytest.raises(ValueError, match="unknown file purpose"):
        validator_for("assistants")
