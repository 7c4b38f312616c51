import math

import pytest
import sacrebleu

from worker.evaluation.scores import (
    METRIC_NAMES,
    aggregate,
    item_scores,
    lcs_length,
    mean_loss_to_perplexity,
    normalize,
)


def score(pred, ref, metric):
    return item_scores(pred, ref, metrics=(metric,))[metric]


# -- normalize ---------------------------------------------------------------


def test_normalize_lowercases_strips_punctuation_and_collapses_whitespace():
    assert normalize("  Hello,   WORLD!\n\tHow's it?  ") == "hello world hows it"


def test_normalize_unicode_punctuation_removed_symbols_kept():
    assert normalize("「東京」。 Straße… 😀 $5") == "東京 strasse 😀 $5"


# -- exact match -------------------------------------------------------------


def test_exact_match_identical_and_surrounding_whitespace():
    assert score("Paris", "Paris", "exact_match") == 1.0
    assert score("  Paris\n", "Paris", "exact_match") == 1.0


def test_exact_match_is_case_sensitive():
    assert score("paris", "Paris", "exact_match") == 0.0


def test_normalized_exact_match_ignores_case_punctuation_whitespace():
    assert score("  the ANSWER is:   42. ", "The answer is 42", "normalized_exact_match") == 1.0
    assert score("the answer is 43", "The answer is 42", "normalized_exact_match") == 0.0


# -- token F1 ----------------------------------------------------------------


def test_token_f1_partial_overlap():
    # common = {the, cat} -> P = 2/3, R = 2/4, F1 = 2PR/(P+R) = 4/7
    assert score("the cat sat", "the cat is here", "token_f1") == pytest.approx(4 / 7)


def test_token_f1_counts_multiplicity():
    # pred bag {a:3}, ref bag {a:1, b:1}: common 1 -> P=1/3, R=1/2 -> F1=0.4
    assert score("a a a", "a b", "token_f1") == pytest.approx(0.4)


def test_token_f1_identical_disjoint_and_normalized():
    assert score("The Cat!", "the cat", "token_f1") == 1.0
    assert score("dog", "cat", "token_f1") == 0.0


def test_token_f1_empty_cases():
    assert score("", "", "token_f1") == 1.0
    assert score("...", "  ", "token_f1") == 1.0  # punctuation only normalizes to empty
    assert score("", "cat", "token_f1") == 0.0
    assert score("cat", "", "token_f1") == 0.0


# -- ROUGE-L -----------------------------------------------------------------


def test_lcs_length_known():
    assert lcs_length("a b c d e".split(), "a x c y e".split()) == 3
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_known_lcs():
    # pred 4 tokens, ref 6 tokens, LCS "the cat on mat" = 4 -> P=1, R=4/6, F=0.8
    assert score("the cat on mat", "the cat sat on the mat", "rouge_l") == pytest.approx(0.8)
    # order matters unlike token F1: LCS of "c b a" vs "a b c" is 1 -> P=R=1/3
    assert score("c b a", "a b c", "rouge_l") == pytest.approx(1 / 3)
    assert score("c b a", "a b c", "token_f1") == 1.0


def test_rouge_l_empty_and_disjoint():
    assert score("", "", "rouge_l") == 1.0
    assert score("", "x", "rouge_l") == 0.0
    assert score("x y", "z", "rouge_l") == 0.0


# -- BLEU / chrF ---------------------------------------------------------------


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_identical_strings_score_100(metric):
    assert score("the quick brown fox jumps", "the quick brown fox jumps", metric) == 100.0
    assert score("yes", "yes", metric) == 100.0


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_disjoint_strings_score_near_zero(metric):
    assert score("alpha beta gamma delta", "xyz qqq www vvv", metric) < 5.0


def test_sentence_bleu_smoothed_for_short_partial_match():
    # No 4-gram match at all: unsmoothed BLEU would be 0.
    assert 0.0 < score("the cat sat", "the cat sat down", "bleu") < 100.0


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_bleu_chrf_empty_cases(metric):
    assert score("", "", metric) == 100.0
    assert score("", "cat", metric) == 0.0
    assert score("cat", "", metric) == 0.0


# -- output length -------------------------------------------------------------


def test_output_length_counts_whitespace_tokens():
    assert score("  one two\tthree\nfour  ", "x", "output_length") == 4.0
    assert score("", "x", "output_length") == 0.0
    assert score("猫が好き 😀", "x", "output_length") == 2.0


# -- unicode / selection / errors ----------------------------------------------


def test_unicode_does_not_crash_and_identical_scores_full():
    s = item_scores("我喜欢猫 😀", "我喜欢猫 😀")
    assert set(s) == set(METRIC_NAMES)
    assert all(s[m] == 1.0 for m in ("exact_match", "normalized_exact_match", "token_f1", "rouge_l"))
    assert s["chrf"] == 100.0 and s["bleu"] == 100.0
    # CJK without spaces: one token each side, so token F1 is all-or-nothing; chrF is graded.
    partial = item_scores("我喜欢狗", "我喜欢猫")
    assert partial["token_f1"] == 0.0
    assert 0.0 < partial["chrf"] < 100.0


def test_default_returns_all_metrics_in_order():
    assert tuple(item_scores("a", "a")) == METRIC_NAMES


def test_metric_subset_selection():
    s = item_scores("The cat", "the cat", metrics=["token_f1", "exact_match"])
    assert s == {"exact_match": 0.0, "token_f1": 1.0}


def test_unknown_metric_raises_naming_it():
    with pytest.raises(ValueError, match="meteor") as exc:
        item_scores("a", "a", metrics=["exact_match", "meteor", "bertscore"])
    assert "bertscore" in str(exc.value)


# -- aggregate -----------------------------------------------------------------


PREDS = ["the cat sat on the mat", "Paris", "a dog barked loudly", ""]
REFS = ["the cat sat on the mat", "paris", "the dog barked", "something"]


def test_aggregate_means_and_corpus_level_bleu_chrf():
    per_item = [item_scores(p, r) for p, r in zip(PREDS, REFS)]
    agg = aggregate(PREDS, REFS, per_item)
    assert tuple(agg) == METRIC_NAMES
    assert agg["exact_match"] == pytest.approx(1 / 4)
    assert agg["normalized_exact_match"] == pytest.approx(2 / 4)
    assert agg["output_length"] == pytest.approx((6 + 1 + 4 + 0) / 4)
    # dog item: common {dog, barked} -> P=2/4, R=2/3 -> F1 = 4/7
    assert agg["token_f1"] == pytest.approx((1 + 1 + 4 / 7 + 0) / 4)
    assert agg["rouge_l"] == pytest.approx((1 + 1 + 4 / 7 + 0) / 4)
    assert agg["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert agg["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    # corpus BLEU is not the mean of the sentence BLEUs
    assert agg["bleu"] != pytest.approx(sum(i["bleu"] for i in per_item) / 4)


def test_aggregate_metric_subset_follows_items():
    per_item = [item_scores(p, r, metrics=("exact_match", "chrf")) for p, r in zip(PREDS, REFS)]
    agg = aggregate(PREDS, REFS, per_item)
    assert set(agg) == {"exact_match", "chrf"}


def test_aggregate_empty_gives_none():
    assert aggregate([], [], []) == {m: None for m in METRIC_NAMES}


def test_aggregate_length_mismatch_and_unknown_metric():
    with pytest.raises(ValueError, match="same length"):
        aggregate(["a"], [], [])
    with pytest.raises(ValueError, match="nope"):
        aggregate([], [], [], metrics=["nope"])


# -- perplexity ------------------------------------------------------------------


def test_perplexity():
    assert mean_loss_to_perplexity(0.0) == 1.0
    assert mean_loss_to_perplexity(math.log(8.0)) == pytest.approx(8.0)
    assert math.isfinite(mean_loss_to_perplexity(700.0))
    assert mean_loss_to_perplexity(700.1) == math.inf
    assert mean_loss_to_perplexity(1e9) == math.inf
    assert math.isnan(mean_loss_to_perplexity(float("nan")))
