"""DPO: the loss, the pairs, and the recipe's DPO path on the tiny Llama.

The working-not-just-running check: a synthetic preference set whose
preferred answers follow a rule the base model does not (answer "Yes", not
"No"): after training, the held-out pairs are ranked the preferred way and
greedy answers start with "Yes" more often than the base model's do.
"""

import math

import pytest
import torch

from tests.worker.training.test_recipe import run_training
from worker.training import preference

WORDS = ("apple", "pear", "plum", "fig", "kiwi", "lime", "date", "lemon", "melon", "grape",
         "peach", "mango", "cherry", "olive", "guava", "papaya")


def pair_line(word: str) -> dict:
    return {
        "input": {"messages": [{"role": "system", "content": "Answer the question."},
                               {"role": "user", "content": f"Is a {word} a fruit?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Yes, a {word} is a fruit."}],
        "non_preferred_output": [{"role": "assistant", "content": f"No, a {word} is not a fruit."}],
    }


TRAIN_PAIRS = [pair_line(word) for word in WORDS[:12]]
EVAL_PAIRS = [pair_line(word) for word in WORDS[12:]]

DPO_HYPERPARAMETERS = dict(batch_size=4, n_epochs=4, learning_rate=2e-2, beta=0.5, warmup_ratio=0.0,
                           eval_interval=4, checkpoint_interval=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def dpo_run(tiny_model_dir, work_dir, **overrides):
    return run_training(tiny_model_dir, work_dir, train_examples=TRAIN_PAIRS, eval_examples=EVAL_PAIRS,
                        method="dpo", **{**DPO_HYPERPARAMETERS, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    return dpo_run(tiny_model_dir, tmp_path_factory.mktemp("dpo"))


# --------------------------------------------------------------------------- the loss


def test_the_loss_is_log_2_where_the_policy_is_the_reference_and_falls_as_it_prefers_the_chosen():
    reference = torch.tensor([-10.0, -12.0, -8.0, -8.5])
    equal = preference.dpo_loss(reference.clone(), reference, beta=0.1)
    assert equal.loss.item() == pytest.approx(2 * math.log(2))
    assert equal.chosen_rewards.tolist() == [0.0, 0.0]

    policy = torch.tensor([-9.0, -13.0, -8.0, -8.5], requires_grad=True)  # pair 1 moved the preferred way
    result = preference.dpo_loss(policy, reference, beta=0.1)
    assert result.loss.item() < equal.loss.item()
    assert result.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])
    assert result.rejected_rewards.tolist() == pytest.approx([-0.1, 0.0])
    result.loss.backward()
    # Descent raises the chosen output's log-probability and lowers the rejected one's.
    assert policy.grad[0] < 0 and policy.grad[1] > 0


def test_totals_give_means_per_pair_and_the_share_ranked_the_preferred_way():
    totals = preference.PreferenceTotals()
    totals.add(preference.dpo_loss(torch.tensor([-1.0, -2.0, -3.0, -1.0]), torch.zeros(4), beta=1.0))
    metrics = totals.metrics("valid_")
    assert metrics["valid_preference_accuracy"] == 0.5
    assert metrics["valid_chosen_reward"] == pytest.approx(-2.0)
    assert metrics["valid_rejected_reward"] == pytest.approx(-1.5)
    assert metrics["valid_reward_margin"] == pytest.approx(-0.5)


def test_each_output_is_its_prompt_plus_that_output_with_only_the_output_trained(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pair = preference.tokenize_pair(tokenizer, pair_line("kiwi"))
    chosen_text = tokenizer.decode([t for t, label in zip(pair.chosen.input_ids, pair.chosen.labels) if label != -100])
    rejected_text = tokenizer.decode([t for t, label in zip(pair.rejected.input_ids, pair.rejected.labels) if label != -100])
    assert chosen_text.startswith("Yes, a kiwi is a fruit.") and "Is a kiwi" not in chosen_text
    assert rejected_text.startswith("No, a kiwi is not a fruit.")
    # The same prompt tokens in front of both.
    prompt_length = pair.chosen.labels.index(next(label for label in pair.chosen.labels if label != -100))
    assert pair.chosen.input_ids[:prompt_length] == pair.rejected.input_ids[:prompt_length]


# --------------------------------------------------------------------------- the recipe


def test_dpo_ranks_held_out_pairs_the_preferred_way_and_records_its_metrics(trained):
    result, metrics = trained.result, trained.metrics
    assert not result.stopped and result.adapter_dir is not None
    assert result.method["training_method"] == "dpo"
    assert [m["step"] for m in metrics] == list(range(1, 13))
    first = metrics[0]
    # Step 1 runs on the starting weights: policy = reference, so log 2 and no margin.
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["train_reward_margin"] == pytest.approx(0.0, abs=1e-4)
    for key in ("train_chosen_reward", "train_rejected_reward", "train_preference_accuracy", "learning_rate"):
        assert key in first
    evaluated = [m for m in metrics if "valid_loss" in m]
    assert [m["step"] for m in evaluated] == [4, 8, 12]
    last = evaluated[-1]
    assert last["valid_preference_accuracy"] == 1.0
    assert last["valid_reward_margin"] > 1.0
    assert last["valid_loss"] < math.log(2) / 4
    assert metrics[-1]["train_loss"] < first["train_loss"] / 4


def answers_starting_with(model_dir, adapter_dir, word: str) -> int:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    count = 0
    for line in EVAL_PAIRS:
        prompt = tokenizer.apply_chat_template(line["input"]["messages"], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            output = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
        count += answer.strip().startswith(word)
    return count


def test_greedy_answers_follow_the_preferred_rule_after_training(trained, tiny_model_dir):
    before = answers_starting_with(tiny_model_dir, None, "Yes")
    after = answers_starting_with(tiny_model_dir, trained.result.adapter_dir, "Yes")
    assert before == 0
    assert after == len(EVAL_PAIRS)


def test_a_resumed_dpo_run_continues_exactly(trained, tiny_model_dir, tmp_path):
    """The reference log-probabilities are those of the starting weights, not of the checkpoint."""
    stopped = dpo_run(tiny_model_dir, tmp_path / "first", stop_after_step=4)
    checkpoint = stopped.work_dir / "checkpoints" / "step-000004"
    assert checkpoint.is_dir()
    resumed = dpo_run(tiny_model_dir, tmp_path / "second", resume_from=checkpoint)
    assert [m["step"] for m in resumed.metrics] == list(range(5, 13))
    expected = trained.metrics[4:]
    for got, want in zip(resumed.metrics, expected):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5, abs=1e-6)
        assert got["train_reward_margin"] == pytest.approx(want["train_reward_margin"], rel=1e-5, abs=1e-6)
