"""Base models: the bundled GGUF converted once (under a lock, by two processes
at once), local folders, Hugging Face snapshots (without the Hub), adapter merges."""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from worker import base_models
from worker.base_models import (
    BUNDLED_SMOLLM2_ID,
    DEFAULT_CATALOGUE,
    HF_ALLOW_PATTERNS,
    BaseModel,
    BaseModelError,
    check_hf_snapshot,
    hf_file_allowed,
    load_causal_lm,
    load_tokenizer,
    merge_adapter,
    parse_hf_source,
    resolve_base_model,
)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------ bundled SmolLM2


def _resolve_bundled_in_child(cache_dir: Path, record_dir: Path, start_together, results) -> None:
    """Runs in a spawned process: resolve the bundled model, noting any conversion it does."""
    from worker import base_models

    convert = base_models._convert_gguf

    def recording_convert(*args, **kwargs):
        (record_dir / f"converted-by-{os.getpid()}").touch()
        return convert(*args, **kwargs)

    base_models._convert_gguf = recording_convert
    start_together.wait(timeout=120)
    results.put(base_models.resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", cache_dir))


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
    assert base.revision == f"gguf-sha256:{base_models.file_sha256(base_models.bundled_gguf_path())[:16]}"
    assert base.max_length == 8192


def _chat_prompt(tokenizer):
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True, return_tensors="pt")


@pytest.mark.slow
def test_bundled_conversion_generates_like_the_gguf(bundled):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = bundled["resolved"][0]
    gguf = base_models.bundled_gguf_path()
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

    monkeypatch.setattr(base_models, "_convert_gguf", no_conversion)
    again = resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", bundled["cache_dir"])
    after = weights.stat()
    assert again == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _fake_conversion(gguf: Path, gguf_sha256: str, target: Path) -> None:
    with base_models.atomic_directory(target) as staging:
        (staging / base_models.CONVERSION_RECORD).write_text(json.dumps({"gguf_sha256": gguf_sha256}))


def test_a_conversion_of_another_gguf_is_replaced(tmp_path, monkeypatch):
    models = tmp_path / "base-models"
    _fake_conversion(Path("old.gguf"), "old-sha", models / "smollm2")
    (models / ".smollm2.tmp-crashed").mkdir()  # what a killed conversion leaves behind
    monkeypatch.setattr(base_models, "_convert_gguf", _fake_conversion)

    base_models.ensure_converted(Path("new.gguf"), "new-sha", models / "smollm2")
    assert base_models._converted_from(models / "smollm2") == "new-sha"
    assert sorted(p.name for p in models.iterdir()) == ["smollm2", "smollm2.lock"]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def failing_conversion(gguf, gguf_sha256, target):
        with base_models.atomic_directory(target) as staging:
            (staging / "model.safetensors").write_bytes(b"half written")
            raise MemoryError("killed halfway")

    monkeypatch.setattr(base_models, "_convert_gguf", failing_conversion)
    with pytest.raises(MemoryError):
        base_models.ensure_converted(Path("x.gguf"), "sha", tmp_path / "base-models" / "smollm2")
    assert sorted(p.name for p in (tmp_path / "base-models").iterdir()) == ["smollm2.lock"]


def test_unknown_bundled_model_is_refused(tmp_path):
    with pytest.raises(BaseModelError, match="unknown bundled model"):
        resolve_base_model("x", "bundled:llama-70b", tmp_path)


# ---------------------------------------------------------------- local folders


def test_local_folder_resolves_with_a_stable_revision(tiny_model_dir, tmp_path):
    base = resolve_base_model("tiny", f"path:{tiny_model_dir}", tmp_path)
    assert base == BaseModel(
        id="tiny", source=f"path:{tiny_model_dir}", local_dir=tiny_model_dir, revision=base.revision, max_length=2048
    )
    assert base.revision.startswith("local-sha256:") and len(base.revision.split(":")[1]) == 16
    # A plain absolute path is the same folder, the same revision.
    assert resolve_base_model("tiny", str(tiny_model_dir), tmp_path).revision == base.revision


def test_local_revision_follows_config_changes(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    revision = resolve_base_model("tiny", str(copy), tmp_path).revision
    assert resolve_base_model("tiny", str(copy), tmp_path).revision == revision

    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    assert resolve_base_model("tiny", str(copy), tmp_path).revision != revision


def test_max_length_falls_back_to_the_tokenizer_when_config_has_none(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096}))
    (folder / "model.safetensors").write_bytes(b"not parsed by resolve")
    assert resolve_base_model("m", str(folder), tmp_path).max_length == 4096

    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert resolve_base_model("m", str(folder), tmp_path).max_length == base_models.FALLBACK_MAX_LENGTH


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_folder_is_refused(tmp_path, pickle_name):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / pickle_name).write_bytes(b"dummy pickle")
    with pytest.raises(BaseModelError, match="safetensors") as refused:
        resolve_base_model("m", f"path:{folder}", tmp_path)
    assert pickle_name in str(refused.value) and "'m'" in str(refused.value)


def test_folder_without_config_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    with pytest.raises(BaseModelError, match="config.json"):
        resolve_base_model("m", str(folder), tmp_path)


@pytest.mark.parametrize(
    "source, message",
    [
        ("/no/such/folder", "does not exist"),
        ("path:/no/such/folder", "does not exist"),
        ("path:models/relative", "not an absolute path"),
        ("models/relative", "unknown source"),
        ("ftp:x", "unknown source"),
        ("", "unknown source"),
    ],
)
def test_bad_sources_are_refused(tmp_path, source, message):
    with pytest.raises(BaseModelError, match=message):
        resolve_base_model("m", source, tmp_path)


# --------------------------------------------------------- Hugging Face (no Hub)


HF_FILES_WANTED = [
    "model.safetensors",
    "model-00001-of-00002.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
]
HF_FILES_REFUSED = [
    "pytorch_model.bin",
    "pytorch_model-00001-of-00002.bin",
    "model.pt",
    "model.pth",
    "optimizer.pkl",
    "model.ckpt",
    "modeling_custom.py",
    "model.gguf",
    "onnx/model.onnx",
    "flax_model.msgpack",
]


@pytest.mark.parametrize("name", HF_FILES_WANTED)
def test_hf_download_admits_weights_configs_and_tokenizers(name):
    assert hf_file_allowed(name)


@pytest.mark.parametrize("name", HF_FILES_REFUSED)
def test_hf_download_rejects_pickles_code_and_other_formats(name):
    assert not hf_file_allowed(name)
    assert "*.bin" not in HF_ALLOW_PATTERNS


def test_hf_source_parsing():
    assert parse_hf_source("hf:Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    assert parse_hf_source("hf:Qwen/Qwen2.5-0.5B-Instruct@main") == ("Qwen/Qwen2.5-0.5B-Instruct", "main")


def test_hf_snapshot_without_safetensors_is_refused(tmp_path):
    snapshot = tmp_path / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "pytorch_model.bin").write_bytes(b"dummy pickle")
    with pytest.raises(BaseModelError, match="safetensors"):
        check_hf_snapshot("org/model", snapshot)


def test_hf_source_resolves_to_the_snapshot_commit(tiny_model_dir, tmp_path, monkeypatch):
    """snapshot_download is replaced by a stand-in: no Hub is reachable from tests."""
    import huggingface_hub

    snapshot = shutil.copytree(tiny_model_dir, tmp_path / "hub" / "snapshots" / COMMIT)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    base = resolve_base_model("org/tiny", "hf:org/tiny@v1", tmp_path)
    assert calls == [("org/tiny", {"revision": "v1", "allow_patterns": HF_ALLOW_PATTERNS})]
    assert (base.local_dir, base.revision, base.max_length) == (snapshot, COMMIT, 2048)


def test_hf_download_failure_becomes_a_readable_error(tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(repo_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(BaseModelError, match=r"could not download org/tiny@v2 .*couldn't connect"):
        resolve_base_model("org/tiny", "hf:org/tiny@v2", tmp_path)


# --------------------------------------------------------------------- loading


def test_load_tokenizer_sets_a_pad_token(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    tokenizer_config = json.loads((copy / "tokenizer_config.json").read_text())
    tokenizer_config.pop("pad_token", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    tokenizer = load_tokenizer(resolve_base_model("tiny", str(copy), tmp_path))
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token == tokenizer.eos_token


def test_load_causal_lm_refuses_remote_code(tiny_model_dir, tmp_path):
    base = resolve_base_model("tiny", str(tiny_model_dir), tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_causal_lm(base, trust_remote_code=True)


# --------------------------------------------------------------------- merging


@pytest.fixture
def lora_adapter(tiny_model_dir, tmp_path):
    """A LoRA adapter on the tiny model whose lora_B is non-zero, so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = resolve_base_model("tiny", str(tiny_model_dir), tmp_path)
    model = load_causal_lm(base, dtype=torch.float32).eval()
    input_ids = torch.tensor([[1, 17, 523, 88, 4012, 9, 2]])
    with torch.no_grad():
        base_logits = model(input_ids).logits

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.05)
        peft_logits = peft_model(input_ids).logits
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    return {
        "base": base,
        "adapter_dir": adapter_dir,
        "input_ids": input_ids,
        "base_logits": base_logits,
        "peft_logits": peft_logits,
    }


def test_merged_model_computes_what_the_adapter_does(lora_adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = merge_adapter(lora_adapter["base"], lora_adapter["adapter_dir"], tmp_path / "merged")

    names = {p.name for p in out_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.")]  # no staging leftovers

    merged = AutoModelForCausalLM.from_pretrained(out_dir, use_safetensors=True, trust_remote_code=False).eval()
    with torch.no_grad():
        merged_logits = merged(lora_adapter["input_ids"]).logits
    assert torch.allclose(merged_logits, lora_adapter["peft_logits"], atol=1e-5)
    assert (merged_logits - lora_adapter["base_logits"]).abs().max() > 1e-3


def test_merge_refuses_an_adapter_without_safetensors(lora_adapter, tmp_path):
    adapter_dir = lora_adapter["adapter_dir"]
    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "adapter_model.bin")
    with pytest.raises(BaseModelError, match="safetensors"):
        merge_adapter(lora_adapter["base"], adapter_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
