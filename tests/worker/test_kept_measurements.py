"""Figures measured once per machine and kept on disk, shared by processes."""

import json
import multiprocessing
import os

from worker.kept_measurements import device_name, kept_or_measured


def test_measured_once_then_read_back(tmp_path):
    kept_in = tmp_path / "work" / "figures.json"
    calls = []

    def measure():
        calls.append(1)
        return {"speed": 42.0}

    assert kept_or_measured(kept_in, "a", measure) == ({"speed": 42.0}, True)
    assert kept_or_measured(kept_in, "a", measure) == ({"speed": 42.0}, False)
    assert len(calls) == 1
    # Another key is measured beside it, and the first is kept.
    assert kept_or_measured(kept_in, "b", lambda: {"speed": 7.0}) == ({"speed": 7.0}, True)
    assert json.loads(kept_in.read_text()) == {"a": {"speed": 42.0}, "b": {"speed": 7.0}}
    assert [path.name for path in kept_in.parent.iterdir() if path.name.endswith(".tmp")] == []


def test_an_unreadable_file_is_measured_again_and_replaced(tmp_path):
    kept_in = tmp_path / "figures.json"
    for broken in ("{not json", "[1, 2]"):
        kept_in.write_text(broken)
        assert kept_or_measured(kept_in, "a", lambda: {"speed": 1.0}) == ({"speed": 1.0}, True)
        assert json.loads(kept_in.read_text()) == {"a": {"speed": 1.0}}


def test_a_file_that_cannot_be_written_still_gives_figures(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    entry, measured_now = kept_or_measured(blocker / "figures.json", "a", lambda: {"speed": 3.0})
    assert (entry, measured_now) == ({"speed": 3.0}, True)
    assert "could not keep measured figures" in caplog.text


def _measure_in_a_process(kept_in, log_file, start):
    start.wait()

    def measure():
        with open(log_file, "a") as log:  # who measured
            log.write(f"{os.getpid()}\n")
        sum(i * i for i in range(2_000_000))  # a probe takes a while: the others arrive meanwhile
        return {"pid": os.getpid()}

    entry, _ = kept_or_measured(kept_in, "cpu", measure)
    with open(log_file.with_suffix(".got"), "a") as got:
        got.write(f"{entry['pid']}\n")


def test_processes_starting_together_measure_once_and_agree(tmp_path):
    kept_in, log_file = tmp_path / "figures.json", tmp_path / "measured.log"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    processes = [context.Process(target=_measure_in_a_process, args=(kept_in, log_file, start)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    measured = log_file.read_text().split()
    assert len(measured) == 1
    assert log_file.with_suffix(".got").read_text().split() == measured * 4


def test_the_cpu_has_a_name():
    assert device_name("cpu").strip()
