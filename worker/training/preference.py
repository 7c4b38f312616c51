"""Preference pairs for DPO: OpenAI's preference lines as token ids, and the loss.

A line (validated on upload, domain/files/validation/):
    {"input": {"messages": [...], "tools"?: [...]},
     "preferred_output": [{"role": "assistant", ...}],
     "non_preferred_output": [{"role": "assistant", ...}]}
Each output becomes the chat example ``input.messages + [output]``, tokenized
as supervised data is (worker/training/data.py): the chat template renders
it, and only the output's tokens (through its end-of-turn token) are labelled.

The loss is DPO's (Rafailov et al. 2023), the sigmoid form:

    loss = -log sigmoid(beta * ((log p(chosen) - log p_ref(chosen))
                               - (log p(rejected) - log p_ref(rejected))))

where log p(y) is the sum of the log-probabilities of the output's tokens.
The reference p_ref is the model the run starts from. Its log-probabilities
are computed once, before the first step (`reference_log_probs` in the
recipe): a fresh LoRA adapter adds exactly nothing at initialisation (its B
matrix is zero), so this is the base model without a second copy in memory,
and a run that continues a fine-tune (SFT, then DPO) is anchored to that
fine-tune, as it should be. rewards = beta * (log p - log p_ref); a pair
counts as "preferred" when the chosen output's reward is above the rejected's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domain.jobs.hyperparameters import DatasetStats
from worker.training.data import SplitData, TokenizedExample, stats_of_lengths, tokenize_example, truncate


@dataclass
class PreferencePair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    # Summed log-probabilities of each output under the reference model.
    reference_chosen: float = 0.0
    reference_rejected: float = 0.0

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens


def as_chat_examples(line: dict) -> tuple[dict, dict]:
    """The (chosen, rejected) chat examples of one preference line."""
    prompt = line["input"]
    messages = list(prompt["messages"])
    tools = prompt.get("tools")

    def example(output: list[dict]) -> dict:
        chat = {"messages": messages + [output[0]]}
        if tools:
            chat["tools"] = tools
        return chat

    return example(line["preferred_output"]), example(line["non_preferred_output"])


def tokenize_pair(tokenizer, line: dict) -> PreferencePair:
    chosen, rejected = as_chat_examples(line)
    return PreferencePair(tokenize_example(tokenizer, chosen), tokenize_example(tokenizer, rejected))


def tokenize_pairs(tokenizer, lines: list[dict], max_seq_length: int) -> tuple[list[PreferencePair], int]:
    """The pairs, each output cut to max_seq_length tokens; and how many pairs were cut."""
    pairs, truncated_count = [], 0
    for number, line in enumerate(lines, 1):
        try:
            pair = tokenize_pair(tokenizer, line)
        except ValueError as error:
            raise ValueError(f"pair {number}: {error}") from error
        chosen, chosen_cut = truncate(pair.chosen, max_seq_length)
        rejected, rejected_cut = truncate(pair.rejected, max_seq_length)
        pairs.append(PreferencePair(chosen, rejected))
        truncated_count += chosen_cut or rejected_cut
    return pairs, truncated_count


def dataset_stats(tokenizer, data: SplitData) -> tuple[DatasetStats, dict]:
    """The statistics hyperparameters are resolved from, for pairs: a length
    is that of one output's whole row (prompt + output), as training sees it."""
    train = [tokenize_pair(tokenizer, line) for line in data.train]
    lengths = [len(example) for pair in train for example in (pair.chosen, pair.rejected)]
    eval_tokens = sum(len(tokenize_pair(tokenizer, line)) for line in data.eval)
    return stats_of_lengths(data, lengths, eval_tokens)


def as_examples(pairs: list[PreferencePair]) -> list[TokenizedExample]:
    """chosen 1, rejected 1, chosen 2, ...: the rows of one forward pass."""
    return [example for pair in pairs for example in (pair.chosen, pair.rejected)]


@dataclass
class PreferenceLoss:
    """DPO's loss and its diagnostics for a group of pairs, summed over pairs
    (the caller divides by the number of pairs)."""

    loss: torch.Tensor  # differentiable
    chosen_rewards: torch.Tensor  # per pair, detached
    rejected_rewards: torch.Tensor


def dpo_loss(policy_log_probs: torch.Tensor, reference_log_probs: torch.Tensor, beta: float) -> PreferenceLoss:
    """Both tensors hold [chosen 1, rejected 1, chosen 2, ...] summed log-probabilities."""
    policy_chosen, policy_rejected = policy_log_probs[0::2], policy_log_probs[1::2]
    reference_chosen, reference_rejected = reference_log_probs[0::2], reference_log_probs[1::2]
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).sum()
    return PreferenceLoss(loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


@dataclass
class PreferenceTotals:
    """Running sums over pairs, turned into per-pair means by `metrics`."""

    pairs: int = 0
    loss: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    preferred: int = 0

    def add(self, result: PreferenceLoss) -> None:
        self.pairs += len(result.chosen_rewards)
        self.loss += result.loss.item()
        self.chosen_reward += result.chosen_rewards.sum().item()
        self.rejected_reward += result.rejected_rewards.sum().item()
        self.preferred += int((result.chosen_rewards > result.rejected_rewards).sum().item())

    def metrics(self, prefix: str = "") -> dict[str, float]:
        pairs = max(self.pairs, 1)
        chosen, rejected = self.chosen_reward / pairs, self.rejected_reward / pairs
        return {
            f"{prefix}loss": self.loss / pairs,
            f"{prefix}chosen_reward": chosen,
            f"{prefix}rejected_reward": rejected,
            f"{prefix}reward_margin": chosen - rejected,
            f"{prefix}preference_accuracy": self.preferred / pairs,
        }
