"""The bundled base model: its GGUF converted once (under a lock, by two
processes at once) into a plain safetensors folder that generates like the
GGUF, reused afterwards, and never left half-written."""

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from worker.models import folders
from worker.models import gguf as conversion
from worker.models.catalog import (
    BUNDLED_SMOLLM2_ID,
    DEFAULT_CATALOGUE,
    BaseModelError,
    load_causal_lm,
    load_tokenizer,
    resolve_base_model,
)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


# ------------------------------------------------------------ bundled SmolLM2


def _resolve_bundled_in_child(cache_dir: Path, record_dir: Path, start_together, results) -> None:
    """Runs in a spawned process: resolve the bundled model, noting any conversion it does."""
    from worker.models import gguf as conversion

    convert = conversion._convert_gguf

    def recording_convert(*args, **kwargs):
        (record_dir / f"converted-by-{os.getpid()}").touch()
        return convert(*args, **kwargs)

    conversion._convert_gguf = recording_convert
    start_together.wait(timeout=120)
    results.put(resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", cache_dir))


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> dict:
    """The bundled model converted by two worker processes racing on one empty cache dir."""
    cache_dir = tmp_path_factory.mktemp("cache")
    record_dir = tmp_path_factory.mktemp("conversions")
    context = multiprocessing.get_context("spawn")
    start_together, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_resolve_bundled_in_child, args=(cache_dir, record_dir, start_together, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        resolved = [results.get(timeout=400) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
    exitcodes = [worker.exitcode for worker in workers]
    return {"cache_dir": cache_dir, "record_dir": record_dir, "resolved": resolved, "exitcodes": exitcodes}


@pytest.mark.slow
def test_two_processes_convert_the_bundled_model_once(bundled):
    assert bundled["exitcodes"] == [0, 0]
    first, second = bundled["resolved"]
    assert first == second
    assert first.local_dir == bundled["cache_dir"] / "base-models" / "smollm2-135m-instruct"
    # One conversion between them, one folder, no staging leftovers.
    assert len(list(bundled["record_dir"].iterdir())) == 1
    assert sorted(p.name for p in (bundled["cache_dir"] / "base-models").iterdir()) == [
        "smollm2-135m-instruct",
        "smollm2-135m-instruct.lock",
    ]


@pytest.mark.slow
def test_bundled_folder_is_a_plain_safetensors_model(bundled):
    base = bundled["resolved"][0]
    names = {p.name for p in base.local_dir.iterdir()}
    expected = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert expected <= names
    assert not any(name.endswith((".gguf", ".bin", ".pt")) for name in names)
    config = json.loads((base.local_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert base.id == BUNDLED_SMOLLM2_ID == next(iter(DEFAULT_CATALOGUE))
    assert base.revision == f"gguf-sha256:{conversion.file_sha256(conversion.bundled_gguf_path())[:16]}"
    assert base.max_length == 8192


def _chat_prompt(tokenizer):
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True, return_tensors="pt")


@pytest.mark.slow
def test_bundled_conversion_generates_like_the_gguf(bundled):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = bundled["resolved"][0]
    gguf = conversion.bundled_gguf_path()
    tokenizer = load_tokenizer(base)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    prompt = _chat_prompt(tokenizer)
    assert prompt["input_ids"].tolist() == _chat_prompt(gguf_tokenizer)["input_ids"].tolist()

    def greedy(model) -> list[int]:
        with torch.no_grad():
            output = model.eval().generate(
                **prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        return output[0, prompt["input_ids"].shape[1] :].tolist()

    converted_tokens = greedy(load_causal_lm(base, dtype=torch.float32))
    gguf_tokens = greedy(AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32))
    assert len(converted_tokens) == 8
    assert converted_tokens == gguf_tokens


@pytest.mark.slow
def test_second_resolve_reuses_the_converted_folder(bundled, monkeypatch):
    first = bundled["resolved"][0]
    weights = first.local_dir / "model.safetensors"
    before = weights.stat()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the bundled model was converted again")

    monkeypatch.setattr(conversion, "_convert_gguf", no_conversion)
    again = resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", bundled["cache_dir"])
    after = weights.stat()
    assert again == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _fake_conversion(gguf: Path, gguf_sha256: str, target: Path) -> None:
    with folders.atomic_directory(target) as staging:
        (staging / conversion.CONVERSION_RECORD).write_text(json.dumps({"gguf_sha256": gguf_sha256}))


def test_a_conversion_of_another_gguf_is_replaced(tmp_path, monkeypatch):
    models = tmp_path / "base-models"
    _fake_conversion(Path("old.gguf"), "old-sha", models / "smollm2")
    (models / ".smollm2.tmp-crashed").mkdir()  # what a killed conversion leaves behind
    monkeypatch.setattr(conversion, "_convert_gguf", _fake_conversion)

    conversion.ensure_converted(Path("new.gguf"), "new-sha", models / "smollm2")
    assert conversion._converted_from(models / "smollm2") == "new-sha"
    assert sorted(p.name for p in models.iterdir()) == ["smollm2", "smollm2.lock"]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def failing_conversion(gguf, gguf_sha256, target):
        with folders.atomic_directory(target) as staging:
            (staging / "model.safetensors").write_bytes(b"half written")
            raise MemoryError("killed halfway")

    monkeypatch.setattr(conversion, "_convert_gguf", failing_conversion)
    with pytest.raises(MemoryError):
        conversion.ensure_converted(Path("x.gguf"), "sha", tmp_path / "base-models" / "smollm2")
    assert sorted(p.name for p in (tmp_path / "base-models").iterdir()) == ["smollm2.lock"]


def test_unknown_bundled_model_is_refused(tmp_path):
    with pytest.raises(BaseModelError, match="unknown bundled model"):
        resolve_base_model("x", "bundled:llama-70b", tmp_path)


