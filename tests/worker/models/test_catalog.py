"""The catalogue of base models: local folders, Hugging Face snapshots
(without the Hub), sources refused, and loading that never runs remote code
or unpickles weights."""

import json
import shutil

import pytest

from worker.models import catalog
from worker.models.catalog import (
    HF_ALLOW_PATTERNS,
    BaseModel,
    BaseModelError,
    check_hf_snapshot,
    hf_file_allowed,
    load_causal_lm,
    load_tokenizer,
    parse_hf_source,
    resolve_base_model,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


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
    assert resolve_base_model("m", str(folder), tmp_path).max_length == catalog.FALLBACK_MAX_LENGTH


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


