"""The compute dtype: measured by a probe kept per machine, or forced."""

import json

import pytest

from worker import compute


@pytest.fixture
def fresh_probe():
    """This process forgets its probe answer before and after the test."""
    compute._measured = None
    compute.choose_compute_dtype.cache_clear()
    yield
    compute._measured = None
    compute.choose_compute_dtype.cache_clear()


def test_the_kept_figures_decide_for_every_process(fresh_probe, tmp_path, monkeypatch):
    kept_in = tmp_path / "compute-probe.json"
    first = compute.choose_compute_dtype("cpu", kept_in=kept_in)
    (key, entry), = json.loads(kept_in.read_text()).items()
    assert f"|probe={compute.PROBE_VERSION}" in key and entry["measured_at"]
    assert (first.fp32_gflops, first.bf16_gflops) == (entry["fp32_gflops"], entry["bf16_gflops"]) > (0, 0)

    # Another process on the machine (here: this one, having forgotten) reads
    # the kept figures instead of measuring; fake figures show it.
    monkeypatch.setattr(compute, "measure_cpu_matmul_gflops", lambda: pytest.fail("measured again"))
    for fp32, bf16, dtype in ((100.0, 400.0, "bfloat16"), (100.0, 110.0, "float32")):
        kept_in.write_text(json.dumps({key: {"fp32_gflops": fp32, "bf16_gflops": bf16, "measured_at": "then"}}))
        compute._measured = None
        compute.choose_compute_dtype.cache_clear()
        choice = compute.choose_compute_dtype("cpu", kept_in=kept_in)
        assert (choice.dtype, choice.fp32_gflops, choice.bf16_gflops) == (dtype, fp32, bf16)
        # Asked again, without the file (the training recipe's record): the same figures.
        assert compute.choose_compute_dtype("cpu", "float32").fp32_gflops == fp32


def test_the_probe_keeps_each_dtype_best_round(monkeypatch):
    """A round slowed by another process does not decide: the best round of each dtype counts."""
    rounds = iter([50.0, 400.0, 180.0, 90.0, 120.0, 410.0])  # fp32, bf16 alternating
    asked = []

    def one_round(dtype_name, seconds):
        asked.append(dtype_name)
        return next(rounds)

    monkeypatch.setattr(compute, "matmul_gflops", one_round)
    assert compute.measure_cpu_matmul_gflops(rounds=3) == (180.0, 410.0)
    assert asked == ["float32", "bfloat16"] * 3


@pytest.mark.parametrize("fp32,bf16,expected", [(187.0, 828.0, "bfloat16"), (300.0, 3.0, "float32"),
                                                 (100.0, 110.0, "float32")])
def test_auto_takes_bf16_only_where_the_probe_finds_it_clearly_faster(fresh_probe, monkeypatch, fp32, bf16, expected):
    """On one CPU bf16 matmuls ran ~100x slower than fp32, on another 4.4x faster."""
    monkeypatch.setattr(compute, "cpu_matmul_gflops", lambda kept_in=None: (fp32, bf16))
    choice = compute.choose_compute_dtype("cpu")
    assert (choice.dtype, choice.fp32_gflops, choice.bf16_gflops) == (expected, fp32, bf16)
    assert f"bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s" in choice.reason
    assert compute.choose_compute_dtype("cpu", "bfloat16").dtype == "bfloat16"  # forced wins
    with pytest.raises(ValueError):
        compute.choose_compute_dtype("cpu", "float16")
