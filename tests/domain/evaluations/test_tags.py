"""Automatic per-item tags."""

from domain.evaluations.tags import item_tags, output_tags, tag_counts


def test_output_tags():
    assert output_tags("Paris", "stop", "Paris") == ["exact_match"]
    assert output_tags("paris.", "stop", "Paris") == ["near_match"]
    assert output_tags("", "stop", "Paris is the capital") == ["empty"]
    assert output_tags("the the the the the the the the", "length", "Paris") == ["cut_off", "much_longer"]
    assert output_tags("yes", "stop", "It is the capital city of France, by far") == ["much_shorter"]
    assert output_tags('{"a": 1', "length", '{"a": 1}') == ["cut_off", "invalid_json", "near_match"]
    assert output_tags('{"a": 2}', "stop", '{"a": 1}') == []
    assert output_tags("not json", "stop", "42") == []  # a bare number is not a JSON document
    assert output_tags(None, None, "x") == ["error"]


def test_regressed_when_the_fine_tune_is_wrong_where_its_base_was_right():
    outputs = {"base": ("Paris", "stop"), "ft": ("Lyon", "stop"), "other": ("Lyon", "stop")}
    tags = item_tags("Paris", outputs, {"base": None, "ft": "base", "other": None})
    assert tags == {"base": ["exact_match"], "ft": ["regressed"], "other": []}
    # Both wrong, or the fine-tune right: no regression.
    assert "regressed" not in item_tags("Paris", {"base": ("Rome", "stop"), "ft": ("Lyon", "stop")}, {"ft": "base"})["ft"]
    assert item_tags("Paris", {"base": ("Paris", "stop"), "ft": (None, None)}, {"ft": "base"})["ft"] == ["error", "regressed"]
    counts = tag_counts([tags, tags], ["base", "ft", "other"])
    assert counts["ft"]["regressed"] == 2 and counts["base"]["exact_match"] == 2 and counts["other"]["empty"] == 0
