import math
import pickle

import pytest

from domain.files.validation.validators import validator_for
from domain.jobs.hyperparameters import (
    HYPERPARAMETER_NAMES,
    DatasetStats,
    HyperparameterError,
    parse_hyperparameters,
    plain_values,
    resolve,
    stats_from_report,
    total_steps,
)
from tests.chat_data import chat_jsonl

PREFIX = "hyperparameters"
METHOD_PREFIX = "method.supervised.hyperparameters"


def stats(train=1000, eval=100, p99=300, longest=900, tokens=None) -> DatasetStats:
    return DatasetStats(train_examples=train, eval_examples=eval, token_length_p99=p99,
                        token_length_max=longest, train_tokens=tokens if tokens is not None else train * 200)


def run(requested=None, data=None, *, model_max_length=8192, device="cuda", **kwargs):
    return resolve(requested or {}, data or stats(), model_max_length=model_max_length,
                   device=device, **kwargs)


def value(name, requested=None, data=None, **kwargs):
    return run(requested, data, **kwargs)[name]["value"]


def parse_error(raw, prefix=PREFIX) -> HyperparameterError:
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters(raw, param_prefix=prefix)
    return info.value


# ---------------------------------------------------------------------------
# parse_hyperparameters: what the user set


@pytest.mark.parametrize("raw", [None, {}, {"extra": {}}, {"extra": None},
                                 {"n_epochs": "auto", "batch_size": "auto",
                                  "learning_rate_multiplier": "auto",
                                  "extra": {"adapter": "auto", "max_seq_length": "auto",
                                            "checkpoint_interval": "auto", "eval_interval": "auto"}},
                                 {"n_epochs": None, "extra": {"lora_r": None}}])
def test_nothing_set_parses_to_empty(raw):
    assert parse_hyperparameters(raw) == {}


def test_openai_and_extra_keys_come_back_flat_in_canonical_order():
    raw = {"learning_rate_multiplier": 0.5, "n_epochs": 4,
           "extra": {"packing": False, "lora_r": 8, "target_modules": ["q_proj", "v_proj"],
                     "lr_scheduler": "cosine", "adapter": "lora", "learning_rate": 1e-4}}
    parsed = parse_hyperparameters(raw)
    assert parsed == {"n_epochs": 4, "learning_rate_multiplier": 0.5, "learning_rate": 1e-4,
                      "adapter": "lora", "lora_r": 8, "target_modules": ["q_proj", "v_proj"],
                      "lr_scheduler": "cosine", "packing": False}
    assert list(parsed) == [n for n in HYPERPARAMETER_NAMES if n in parsed]


def test_every_hyperparameter_accepts_a_good_value():
    good = {"n_epochs": 100, "batch_size": 256, "learning_rate_multiplier": 100,
            "extra": {"learning_rate": 1, "adapter": "qlora", "lora_r": 512, "lora_alpha": 4096,
                      "lora_dropout": 0, "target_modules": "all-linear", "max_seq_length": 16,
                      "warmup_ratio": 0.5, "lr_scheduler": "constant_with_warmup",
                      "weight_decay": 1, "gradient_accumulation_steps": 256, "packing": True,
                      "compute_dtype": "bfloat16", "checkpoint_interval": 1, "eval_interval": 1}}
    assert list(parse_hyperparameters(good)) == list(HYPERPARAMETER_NAMES)


# (name, bad value) for every hyperparameter: range edges, wrong types, bools, NaN/inf.
BAD_VALUES = [
    ("n_epochs", 0), ("n_epochs", 101), ("n_epochs", 3.0), ("n_epochs", "3"), ("n_epochs", True),
    ("n_epochs", "AUTO"),
    ("batch_size", 0), ("batch_size", 257), ("batch_size", False), ("batch_size", [8]),
    ("learning_rate_multiplier", 0), ("learning_rate_multiplier", -1),
    ("learning_rate_multiplier", 100.5), ("learning_rate_multiplier", math.nan),
    ("learning_rate_multiplier", math.inf), ("learning_rate_multiplier", True),
    ("learning_rate", 0), ("learning_rate", 1.5), ("learning_rate", "auto"),
    ("learning_rate", "0.001"), ("learning_rate", -math.inf),
    ("adapter", "Full"), ("adapter", "QLoRA"), ("adapter", 4),
    ("compute_dtype", "float16"), ("compute_dtype", "bf16"), ("compute_dtype", True),
    ("lora_r", 0), ("lora_r", 513), ("lora_r", 8.0), ("lora_r", True), ("lora_r", "auto"),
    ("lora_alpha", 0), ("lora_alpha", 4097), ("lora_alpha", math.nan), ("lora_alpha", False),
    ("lora_dropout", 1), ("lora_dropout", -0.01), ("lora_dropout", math.nan),
    ("target_modules", "q_proj"), ("target_modules", []), ("target_modules", ["q_proj", ""]),
    ("target_modules", ["q_proj", "q_proj"]), ("target_modules", ["q_proj", 3]),
    ("target_modules", {"q_proj": True}),
    ("max_seq_length", 15), ("max_seq_length", 131073), ("max_seq_length", 512.0),
    ("warmup_ratio", 0.51), ("warmup_ratio", -0.1), ("warmup_ratio", math.inf),
    ("lr_scheduler", "step"), ("lr_scheduler", "auto"), ("lr_scheduler", 1),
    ("weight_decay", 1.01), ("weight_decay", -1), ("weight_decay", "0"),
    ("gradient_accumulation_steps", 0), ("gradient_accumulation_steps", 257),
    ("gradient_accumulation_steps", True),
    ("packing", 1), ("packing", "true"), ("packing", "auto"),
    ("checkpoint_interval", 0), ("checkpoint_interval", 1.5), ("checkpoint_interval", True),
    ("eval_interval", 0), ("eval_interval", -5), ("eval_interval", "10"),
]


def request_with(name, bad):
    if name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        return {name: bad}
    return {"extra": {name: bad}}


@pytest.mark.parametrize("name,bad", BAD_VALUES, ids=[f"{n}={b!r}" for n, b in BAD_VALUES])
def test_bad_value_names_its_exact_path(name, bad):
    where = "" if name in ("n_epochs", "batch_size", "learning_rate_multiplier") else "extra."
    error = parse_error(request_with(name, bad))
    assert error.param == f"hyperparameters.{where}{name}"
    assert error.message.startswith(name) and str(error) == error.message
    assert isinstance(error, ValueError)

    error = parse_error(request_with(name, bad), prefix=METHOD_PREFIX)
    assert error.param == f"method.supervised.hyperparameters.{where}{name}"


def test_error_messages_say_what_is_allowed_and_what_was_given():
    assert parse_error({"extra": {"lora_r": 0}}).message == \
        "lora_r must be an integer between 1 and 512, got 0"
    assert parse_error({"n_epochs": True}).message == \
        'n_epochs must be "auto" or an integer between 1 and 100, got true'
    assert parse_error({"extra": {"lora_dropout": 1}}).message == \
        "lora_dropout must be a number >= 0 and < 1, got 1"
    assert parse_error({"extra": {"lora_alpha": math.nan}}).message == \
        "lora_alpha must be a number > 0 and <= 4096, got NaN"
    assert parse_error({"extra": {"adapter": "prefix"}}).message == \
        'adapter must be "auto" or one of "qlora", "lora", "full", got "prefix"'
    assert "leave it out" in parse_error({"extra": {"learning_rate": "auto"}}).message
    error = parse_error({"extra": {"target_modules": ["q_proj", ""]}})
    assert error.message.startswith("target_modules[1] must be a non-empty module name")


@pytest.mark.parametrize("raw,where", [([], ""), ("auto", ""), (3, ""),
                                       ({"extra": []}, ".extra"), ({"extra": "lora"}, ".extra")])
def test_non_object_hyperparameters_or_extra_are_rejected(raw, where):
    for prefix in (PREFIX, METHOD_PREFIX):
        error = parse_error(raw, prefix)
        assert error.param == prefix + where
        assert "must be an object" in error.message


def test_unknown_keys_are_named():
    error = parse_error({"n_epochs": 2, "epochs": 3, "lr": 1})
    assert error.param == "hyperparameters.epochs"
    assert '"epochs", "lr"' in error.message and "known: n_epochs" in error.message

    error = parse_error({"extra": {"lora_rank": 8}}, prefix=METHOD_PREFIX)
    assert error.param == "method.supervised.hyperparameters.extra.lora_rank"
    assert "in extra" in error.message

    # The two easy mistakes get a hint.
    error = parse_error({"lora_r": 8})
    assert error.param == "hyperparameters.lora_r" and 'under "extra"' in error.message
    error = parse_error({"extra": {"batch_size": 8}})
    assert error.param == "hyperparameters.extra.batch_size" and "OpenAI" in error.message


def test_gradient_accumulation_may_not_exceed_the_batch():
    error = parse_error({"batch_size": 4, "extra": {"gradient_accumulation_steps": 8}})
    assert error.param == "hyperparameters.extra.gradient_accumulation_steps"
    assert "must not exceed batch_size (4)" in error.message
    assert parse_hyperparameters({"batch_size": 8, "extra": {"gradient_accumulation_steps": 8}}) == \
        {"batch_size": 8, "gradient_accumulation_steps": 8}


# ---------------------------------------------------------------------------
# resolve: the shape


def test_every_name_resolved_in_order_with_origins_and_reasons():
    resolved = run()
    assert list(resolved) == list(HYPERPARAMETER_NAMES)
    for name, entry in resolved.items():
        assert set(entry) == {"value", "origin", "reason"}
        assert entry["origin"] in ("auto", "default"), name
        assert isinstance(entry["reason"], str) and entry["reason"] and "\n" not in entry["reason"]
        assert entry["value"] != "auto", name
    origins = {name: entry["origin"] for name, entry in resolved.items()}
    assert [n for n, o in origins.items() if o == "auto"] == [
        "n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate", "adapter",
        "max_seq_length", "compute_dtype", "checkpoint_interval", "eval_interval"]


def test_defaults():
    values = plain_values(run(device="cuda"))
    assert list(values) == list(HYPERPARAMETER_NAMES)
    assert {k: values[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "target_modules",
                                   "warmup_ratio", "lr_scheduler", "weight_decay",
                                   "gradient_accumulation_steps", "packing",
                                   "learning_rate_multiplier", "learning_rate")} == {
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear",
        "warmup_ratio": 0.03, "lr_scheduler": "linear", "weight_decay": 0.0,
        "gradient_accumulation_steps": 1, "packing": True,
        "learning_rate_multiplier": 1.0, "learning_rate": 2e-4}
    resolved = run()
    assert resolved["learning_rate_multiplier"]["reason"] == "OpenAI default"
    assert resolved["learning_rate"]["reason"] == "2e-4 (the usual LoRA/QLoRA rate) × multiplier 1.0"
    assert resolved["packing"]["reason"].startswith("padding-free batching")
    assert "Unsloth + TRL SFTTrainer recipe" in resolved["lora_dropout"]["reason"]


def test_user_values_pass_through_unchanged_with_no_reason():
    raw = {"n_epochs": 7, "batch_size": 16, "learning_rate_multiplier": 2,
           "extra": {"adapter": "lora", "lora_r": 64, "lora_alpha": 16, "lora_dropout": 0.1,
                     "target_modules": ["q_proj", "k_proj"], "max_seq_length": 1000,
                     "warmup_ratio": 0.1, "lr_scheduler": "cosine", "weight_decay": 0.01,
                     "gradient_accumulation_steps": 4, "packing": False, "compute_dtype": "float32",
                     "checkpoint_interval": 50, "eval_interval": 25}}
    requested = parse_hyperparameters(raw)
    resolved = run(requested, measured_compute_dtype=("bfloat16", "measured faster"))
    for name, given in requested.items():
        assert resolved[name] == {"value": given, "origin": "user", "reason": None}, name
    # The only thing left to choose is the learning rate, from the user's multiplier.
    assert resolved["learning_rate"] == {"value": 4e-4, "origin": "auto",
                                         "reason": "2e-4 (the usual LoRA/QLoRA rate) × multiplier 2"}


def test_lora_alpha_follows_lora_r():
    resolved = run(parse_hyperparameters({"extra": {"lora_r": 8}}))
    assert resolved["lora_alpha"] == {"value": 16, "origin": "default",
                                      "reason": "2 × lora_r (8), a common LoRA scaling"}


def test_learning_rate_multiplier_scales_the_rate():
    assert value("learning_rate", {"learning_rate_multiplier": 3}) == 6e-4  # not 0.0006000000000000001
    assert value("learning_rate", {"learning_rate_multiplier": 0.1}) == 2e-5


def test_explicit_learning_rate_overrides_the_multiplier():
    resolved = run(parse_hyperparameters({"learning_rate_multiplier": 3,
                                          "extra": {"learning_rate": 1e-5}}))
    assert resolved["learning_rate"]["value"] == 1e-5
    assert resolved["learning_rate"]["origin"] == "user"
    assert "overrides learning_rate_multiplier 3" in resolved["learning_rate"]["reason"]
    assert resolved["learning_rate_multiplier"] == {"value": 3, "origin": "user", "reason": None}

    resolved = run({"learning_rate": 1e-5})
    assert resolved["learning_rate_multiplier"]["value"] == 1.0
    assert "unused" in resolved["learning_rate_multiplier"]["reason"]


# ---------------------------------------------------------------------------
# Auto rules


@pytest.mark.parametrize("train,epochs,word", [
    (1, 25, "raised"), (4, 25, "raised"), (5, 20, "raised"), (10, 10, "raised"), (33, 4, "raised"),
    (34, 3, "default"), (100, 3, "default"), (8333, 3, "default"),
    (8334, 2, "lowered"), (12500, 2, "lowered"), (12501, 1, "lowered"), (100_000, 1, "lowered"),
])
def test_auto_epochs_follow_openai(train, epochs, word):
    entry = run(data=stats(train=train))["n_epochs"]
    assert entry["value"] == epochs and entry["origin"] == "auto"
    assert f"{train:,} training example" in entry["reason"] and word in entry["reason"]


def test_auto_epochs_reason_wording():
    assert run(data=stats(train=12))["n_epochs"]["reason"] == \
        "12 training examples: raised from 3 to 9 epochs to reach ~100 example passes"
    assert "would need 34" in run(data=stats(train=3))["n_epochs"]["reason"]


@pytest.mark.parametrize("train,device,max_seq_length,batch", [
    (1, "cuda", 512, 1),           # 0.2% of 1 < 1 -> 1
    (10, "cpu", 512, 1),
    (707, "cuda", 512, 1),         # 1.414 < sqrt(2): rounds down to 2**0
    (708, "cuda", 512, 2),         # 1.416 > sqrt(2): rounds up to 2**1
    (1000, "cuda", 512, 2),
    (5000, "cuda", 512, 8),        # 10 -> 8
    (5000, "cpu", 512, 8),         # cpu cap 8192 // 512 = 16
    (20_000, "cuda", 512, 32),     # 40 -> 32, cap 16384 // 512 = 32
    (20_000, "cpu", 512, 16),      # cap 8192 // 512 = 16
    (100_000, "cuda", 128, 64),    # 200 -> 256, cap 128, auto max 64
    (100_000, "cpu", 128, 64),     # cap 64
    (100_000, "cuda", 3000, 4),    # 16384 // 3000 = 5 -> power of 2: 4
    (100_000, "cpu", 3000, 2),     # 8192 // 3000 = 2
    (100_000, "cuda", 131_072, 1),  # budget smaller than one sequence
])
def test_auto_batch_size(train, device, max_seq_length, batch):
    entry = run({"max_seq_length": max_seq_length}, stats(train=train),
                model_max_length=131_072, device=device)["batch_size"]
    assert entry["value"] == batch and entry["origin"] == "auto"
    assert f"{train:,} training example" in entry["reason"]
    assert f"max_seq_length {max_seq_length}" in entry["reason"]
    assert ("16384-token CUDA" if device == "cuda" else "8192-token CPU") in entry["reason"]


def test_auto_batch_size_uses_the_resolved_max_seq_length():
    # p99 1000 -> max_seq_length 1024 -> cap 16384 // 1024 = 16 on cuda
    resolved = run(data=stats(train=100_000, p99=1000, longest=1000))
    assert resolved["max_seq_length"]["value"] == 1024
    assert resolved["batch_size"]["value"] == 16
    assert "capped at 16 by memory" in resolved["batch_size"]["reason"]


def test_auto_batch_size_grows_to_the_user_gradient_accumulation():
    resolved = run({"gradient_accumulation_steps": 8}, stats(train=1000))
    assert resolved["batch_size"]["value"] == 8
    assert "raised to gradient_accumulation_steps" in resolved["batch_size"]["reason"]
    with pytest.raises(HyperparameterError) as info:
        run({"gradient_accumulation_steps": 8}, stats(train=5))
    assert info.value.param == "hyperparameters.extra.gradient_accumulation_steps"
    assert "only 5 examples" in info.value.message


def test_adapter_by_device():
    cuda, cpu = run(device="cuda")["adapter"], run(device="cpu")["adapter"]
    assert cuda == {"value": "qlora", "origin": "auto", "reason": "4-bit NF4 QLoRA: the CUDA default"}
    assert cpu == {"value": "lora", "origin": "auto",
                   "reason": "no CUDA: LoRA on full-precision weights; 4-bit on CPU is ~20x slower"}
    assert value("adapter", device="cuda:1") == "qlora"
    assert value("adapter", {"adapter": "qlora"}, device="cpu") == "qlora"  # the user's choice stands
    with pytest.raises(ValueError):
        run(device="mps")


def test_full_fine_tuning_is_chosen_never_auto_and_learns_at_a_tenth_of_the_rate():
    assert value("adapter", {"adapter": "full"}, device="cuda") == "full"
    assert {run(device=d)["adapter"]["value"] for d in ("cpu", "cuda")} == {"lora", "qlora"}
    rate = run({"adapter": "full"})["learning_rate"]
    assert rate["value"] == 2e-5 and rate["origin"] == "auto" and "a tenth" in rate["reason"]
    assert value("learning_rate", {"adapter": "full", "learning_rate_multiplier": 2}) == 4e-5
    assert value("learning_rate", {"adapter": "full", "learning_rate": 1e-4}) == 1e-4  # the user's rate stands
    assert value("learning_rate", {"adapter": "lora"}) == 2e-4


def test_compute_dtype_measured_by_the_worker_forced_by_the_user():
    # The worker passes its probe's choice; it is recorded with the probe's reason.
    measured = run(device="cpu", measured_compute_dtype=("bfloat16", "bf16 measured 4.4x faster"))
    assert measured["compute_dtype"] == {"value": "bfloat16", "origin": "auto", "reason": "bf16 measured 4.4x faster"}
    # A value the user sets wins over the measurement, either way.
    for forced in ("float32", "bfloat16"):
        resolved = run({"compute_dtype": forced}, device="cpu", measured_compute_dtype=("bfloat16", "faster"))
        assert resolved["compute_dtype"] == {"value": forced, "origin": "user", "reason": None}
    # "auto" in the request means "measure".
    assert parse_hyperparameters({"extra": {"compute_dtype": "auto"}}) == {}
    assert parse_error({"extra": {"compute_dtype": "float16"}}).message == \
        'compute_dtype must be "auto" or one of "float32", "bfloat16", got "float16"'
    # A preview (the API cannot measure) says what it assumes.
    assert value("compute_dtype", device="cuda") == "bfloat16"
    preview = run(device="cpu")["compute_dtype"]
    assert preview["value"] == "float32" and preview["origin"] == "auto" and "measures" in preview["reason"]
    with pytest.raises(ValueError):
        run(device="cpu", measured_compute_dtype=("float16", "?"))


@pytest.mark.parametrize("p99,model_max,device,expected", [
    (0, 8192, "cuda", 64),           # at least 64
    (10, 8192, "cuda", 64),
    (64, 8192, "cuda", 64),
    (65, 8192, "cuda", 128),         # rounded up to a multiple of 64
    (300, 8192, "cpu", 320),
    (5000, 32_768, "cuda", 5056),
    (5000, 32_768, "cpu", 4096),     # the CPU cap
    (9000, 32_768, "cuda", 8192),    # the CUDA cap
    (9000, 2048, "cuda", 2048),      # the model's cap
    (3000, 2048, "cpu", 2048),       # the model's cap is below the CPU's
    (100, 100, "cuda", 100),         # a model cap that is not a multiple of 64
])
def test_auto_max_seq_length(p99, model_max, device, expected):
    entry = run(data=stats(p99=p99, longest=p99), model_max_length=model_max,
                device=device)["max_seq_length"]
    assert entry["value"] == expected and entry["origin"] == "auto"
    assert f"99th-percentile example length {p99} tokens" in entry["reason"]
    if model_max <= (8192 if device == "cuda" else 4096):
        assert f"the model's maximum length {model_max}" in entry["reason"]
    else:
        assert f"the {device.upper()} limit" in entry["reason"]


def test_max_seq_length_reason_tells_about_truncation():
    reason = run(data=stats(p99=300, longest=1200))["max_seq_length"]["reason"]
    assert "longest example has 1200 tokens; longer ones are truncated" in reason
    assert "about 1%" in reason
    reason = run(data=stats(p99=9000, longest=20_000), model_max_length=32_768)["max_seq_length"]["reason"]
    assert "capped at the CUDA limit 8192" in reason and "more than 1%" in reason
    assert "no example is truncated" in run(data=stats(p99=300, longest=320))["max_seq_length"]["reason"]


def test_intervals_are_a_tenth_of_the_run():
    # 1000 examples: 3 epochs; 16384 // 320 = 51 -> 32 cap, 0.2% = 2 -> batch 2 -> 1500 steps
    resolved = run(data=stats(train=1000, eval=100))
    assert (resolved["n_epochs"]["value"], resolved["batch_size"]["value"]) == (3, 2)
    assert resolved["checkpoint_interval"]["value"] == resolved["eval_interval"]["value"] == 150
    assert "1500 optimizer steps" in resolved["checkpoint_interval"]["reason"]
    assert "end of each epoch" in resolved["checkpoint_interval"]["reason"]
    assert "100 eval examples" in resolved["eval_interval"]["reason"]

    # 10 examples, batch 1, 10 epochs -> 100 steps -> every 10; 101 steps -> every 11.
    assert value("checkpoint_interval", data=stats(train=10)) == 10
    assert value("checkpoint_interval", {"n_epochs": 1}, stats(train=101)) == 11
    assert value("eval_interval", {"n_epochs": 1}, stats(train=5)) == 1  # never 0


def test_eval_interval_without_eval_examples_still_resolves():
    entry = run(data=stats(eval=0))["eval_interval"]
    assert entry["value"] >= 1 and entry["origin"] == "auto"
    assert "nothing to evaluate on" in entry["reason"]


# ---------------------------------------------------------------------------
# Conflicts with the data or the model


@pytest.mark.parametrize("prefix", [PREFIX, METHOD_PREFIX])
def test_user_values_that_do_not_fit_the_data_or_model_are_rejected(prefix):
    with pytest.raises(HyperparameterError) as info:
        run({"max_seq_length": 4096}, model_max_length=2048, param_prefix=prefix)
    assert info.value.param == f"{prefix}.extra.max_seq_length"
    assert "4096" in info.value.message and "2048" in info.value.message

    with pytest.raises(HyperparameterError) as info:
        run({"batch_size": 32}, stats(train=20), param_prefix=prefix)
    assert info.value.param == f"{prefix}.batch_size"
    assert "the training split, which has only 20 examples" in info.value.message

    assert value("batch_size", {"batch_size": 20}, stats(train=20)) == 20


def test_resolve_checks_a_stored_request_again():
    with pytest.raises(HyperparameterError) as info:
        run({"lora_r": 0})
    assert info.value.param == "hyperparameters.extra.lora_r"
    with pytest.raises(HyperparameterError) as info:
        run({"bogus": 1})
    assert info.value.param == "hyperparameters.bogus"
    assert value("n_epochs", {"n_epochs": "auto"}) == 3  # "auto" in a stored copy still means auto


def test_an_empty_training_split_is_an_error():
    with pytest.raises(HyperparameterError) as info:
        run(data=stats(train=0))
    assert info.value.param == "training_file"


def test_no_auto_left_for_any_request_or_device():
    for raw in (None, {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
                       "extra": {"adapter": "auto", "max_seq_length": "auto",
                                 "checkpoint_interval": "auto", "eval_interval": "auto"}}):
        for device in ("cuda", "cpu"):
            for train in (1, 50, 10_000):
                values = plain_values(run(parse_hyperparameters(raw), stats(train=train), device=device))
                assert "auto" not in values.values()
                assert list(values) == list(HYPERPARAMETER_NAMES)


# ---------------------------------------------------------------------------
# Helpers


def test_total_steps():
    assert total_steps(3, 8, 100) == 3 * 13
    assert total_steps(1, 1, 1) == 1
    assert total_steps(2, 10, 10) == 2
    assert total_steps(5, 256, 1) == 5
    with pytest.raises(ValueError):
        total_steps(1, 0, 10)


def test_stats_from_a_real_upload_report():
    result = validator_for("fine-tune")
    result.feed(chat_jsonl(40))
    report = result.finish().report
    stats_ = stats_from_report(report)
    train, test = report["split"]["train"], report["split"]["test"]
    assert train + test == report["examples"] == 40
    tokens = report["estimated_tokens"]
    assert stats_ == DatasetStats(train_examples=train, eval_examples=test,
                                  token_length_p99=tokens["p95"], token_length_max=tokens["max"],
                                  train_tokens=round(tokens["total"] * train / 40))
    # And it is good enough to preview a job.
    assert plain_values(resolve({}, stats_, model_max_length=8192, device="cpu"))["max_seq_length"] == 64


def test_stats_from_a_report_dict():
    report = {"examples": 1000, "split": {"train": 900, "test": 100},
              "estimated_tokens": {"min": 20, "mean": 150.5, "max": 4000, "p95": 610,
                                   "total": 150_500, "method": "characters / 4, plus 4 per message"}}
    assert stats_from_report(report) == DatasetStats(900, 100, 610, 4000, 135_450)


def test_error_survives_pickling():
    error = HyperparameterError("hyperparameters.extra.lora_r", "lora_r must be ...")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.param, copy.message) == (error.param, error.message)


# ---------------------------------------------------------------------------
# The schema: one model for both places, documented as docs/hyperparameters.md says


def test_the_schema_and_the_docs_table_agree():
    """Every row of the reference table: where the key goes, its type and range,
    whether it takes "auto" — read from the pydantic models' JSON schema."""
    import re
    from pathlib import Path

    from domain.jobs.hyperparameters import ExtraHyperparameters, Hyperparameters

    docs = (Path(__file__).parents[3] / "docs" / "hyperparameters.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (top level|extra) \| ([^|]+) \| (yes|no) \|", docs, re.M)
    assert [row[0] for row in rows] == list(HYPERPARAMETER_NAMES)
    top = Hyperparameters.model_json_schema()
    extra = top["$defs"]["ExtraHyperparameters"]
    assert extra == ExtraHyperparameters.model_json_schema()

    for name, where, kind, auto in rows:
        schema = top if where == "top level" else extra
        variants = schema["properties"][name]["anyOf"]
        assert ({"type": "string", "const": "auto"} in variants) == (auto == "yes"), name
        [value] = [v for v in variants if v != {"type": "null"} and v != {"type": "string", "const": "auto"}
                   and v.get("const") != "all-linear"]
        if match := re.match(r"integer (\d+)–(\d+)", kind):
            assert (value["type"], value["minimum"], value["maximum"]) == ("integer", *map(int, match.groups())), name
        elif match := re.match(r"integer ≥ (\d+) .*at most 10⁹", kind):
            assert (value["type"], value["minimum"], value["maximum"]) == ("integer", int(match[1]), 10**9), name
        elif match := re.match(r"number, (\S+) (<|≤) x (<|≤) (\S+)", kind):
            low, low_op, high_op, high = match.groups()
            assert value["type"] == "number", name
            assert value["exclusiveMinimum" if low_op == "<" else "minimum"] == float(low), name
            assert value["exclusiveMaximum" if high_op == "<" else "maximum"] == float(high), name
        elif kind.startswith("`true`"):
            assert value == {"type": "boolean"}, name
        elif name == "target_modules":
            assert kind.startswith('`"all-linear"` or a non-empty list of distinct')
            assert (value["type"], value["minItems"], value["uniqueItems"]) == ("array", 1, True)
        else:  # a choice: `"a"`, `"b"` ...
            assert value["enum"] == re.findall(r'`"([\w-]+)"`', kind), name


def test_the_docs_table_gives_dpo_beta_as_its_schema_does():
    import re
    from pathlib import Path

    from domain.jobs.hyperparameters import DpoHyperparameters

    docs = (Path(__file__).parents[3] / "docs" / "hyperparameters.md").read_text()
    [(low, high, auto)] = re.findall(r"^\| `beta` \| DPO only[^|]+\| number, (\S+) < x ≤ (\S+) \| (yes|no) \|", docs, re.M)
    variants = DpoHyperparameters.model_json_schema()["properties"]["beta"]["anyOf"]
    assert ({"type": "string", "const": "auto"} in variants) == (auto == "yes")
    [value] = [v for v in variants if v.get("type") == "number"]
    assert (value["exclusiveMinimum"], value["maximum"]) == (float(low), float(high))


def test_method_and_top_level_take_the_same_object():
    from domain.jobs.schemas import CreateJobRequest

    raw = {"n_epochs": 2, "extra": {"lora_r": 8}}
    top = CreateJobRequest.model_validate({"model": "m", "training_file": "f", "hyperparameters": raw})
    method = CreateJobRequest.model_validate(
        {"model": "m", "training_file": "f", "method": {"type": "supervised", "supervised": {"hyperparameters": raw}}})
    assert top.hyperparameters == method.method.supervised.hyperparameters
    assert parse_hyperparameters(raw) == {"n_epochs": 2, "lora_r": 8}


def test_numbers_given_as_integers_stay_integers():
    parsed = parse_hyperparameters({"learning_rate_multiplier": 2, "extra": {"lora_alpha": 16, "weight_decay": 0}})
    assert parsed == {"learning_rate_multiplier": 2, "lora_alpha": 16, "weight_decay": 0}
    assert all(type(value) is int for value in parsed.values())
    assert parse_hyperparameters({"learning_rate_multiplier": 0.5}) == {"learning_rate_multiplier": 0.5}


# ---------------------------------------------------------------------------
# DPO


def test_dpo_resolves_beta_last_and_starts_from_a_lower_learning_rate():
    resolved = resolve({}, stats(), model_max_length=2048, device="cpu", method="dpo")
    assert list(resolved) == [*HYPERPARAMETER_NAMES, "beta"]
    assert resolved["beta"]["value"] == 0.1 and resolved["beta"]["origin"] == "auto"
    assert resolved["learning_rate"]["value"] == 5e-5
    assert "DPO" in resolved["learning_rate"]["reason"]
    doubled = resolve({"learning_rate_multiplier": 2, "beta": 0.5}, stats(), model_max_length=2048,
                      device="cpu", method="dpo")
    assert doubled["learning_rate"]["value"] == 1e-4
    assert doubled["beta"] == {"value": 0.5, "origin": "user", "reason": None}


def test_beta_belongs_to_dpo_only():
    with pytest.raises(HyperparameterError) as refused:
        resolve({"beta": 0.1}, stats(), model_max_length=2048, device="cpu")
    assert refused.value.param == "hyperparameters.beta"
    with pytest.raises(HyperparameterError) as refused:
        parse_hyperparameters({"beta": 0.1})
    assert "DPO hyperparameter" in refused.value.message
    assert parse_hyperparameters({"beta": 0.1, "n_epochs": 2}, method="dpo") == {"n_epochs": 2, "beta": 0.1}
    with pytest.raises(HyperparameterError) as refused:
        parse_hyperparameters({"beta": 3}, method="dpo")
    assert refused.value.param == "hyperparameters.beta"
