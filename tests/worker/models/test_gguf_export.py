"""GGUF exports, verified by llama.cpp itself (llama-cpp-python): a briefly
trained tiny Llama with a LoRA adapter merged into it is written as f16, q8_0
and q4_k_m; llama.cpp tokenizes like the Hugging Face tokenizer, renders the
chat prompt from the GGUF's own template token for token as the tokenizer
does, the f16 file's greedy tokens are the merged model's, and the quantized
files agree with it within the tolerances below. Tiny Qwen2 and Mistral
configs (with BPE tokenizers of Qwen2's and Llama 3's pre-tokenizers) load
with the logits of transformers."""

import ctypes
import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_model import build_tiny_llama
from worker.models.catalog import resolve_base_model
from worker.models.gguf_export import (
    GGUFExportError,
    gguf_zip,
    modelfile,
    pre_tokenizer_name,
    write_gguf,
)
from worker.models.merge import merge_adapter

llama_cpp = pytest.importorskip("llama_cpp", reason="the `export` extra (llama-cpp-python) loads the exports")

# Real K-quant blocks need rows of a multiple of 256 values.
TRAINED_CONFIG = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
CHATS = [
    [{"role": "system", "content": "You are a farm assistant."}, {"role": "user", "content": "What sound does a cat make? (3)"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What sound does a cow make? (10)"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What sound does a dog make? (1)"},
        {"role": "assistant", "content": "Woof."},
        {"role": "user", "content": "What sound does an owl make? (22)"},
    ],
]
NO_SYSTEM = [{"role": "user", "content": "What sound does a cow make? (5)"}]
TOKENIZER_TEXTS = [
    "Hello world! The year 2024 has 365 days, isn't it?",
    "  leading spaces,\ttabs\n\nand newlines\r\n 123456789 0.5 -7",
    "Ünïcödé — 東京 🙂 naïve café's",
    "<|im_start|>user\nspecial tokens inline<|im_end|>\n",
]
# The agreement a quantized file must keep with the f16 one on FIXED_TEXT
# (77 tokens): top-1 agreement at least, mean KL(f16 || quantized) in nats at
# most. Measured: q8_0 1.0 and 0.0001, q4_k_m 0.987 and 0.002.
TOLERANCES = {"q8_0": (0.97, 0.002), "q4_k_m": (0.9, 0.02)}
FIXED_TEXT = (
    "<|im_start|>user\nWhat sound does a cat make? (12)<|im_end|>\n<|im_start|>assistant\nMeow.<|im_end|>\n"
    "<|im_start|>user\nWhat sound does a dog make? (13)<|im_end|>\n<|im_start|>assistant\nWoof.<|im_end|>\n"
    "A farm has cows that say moo, owls that hoot at night, and 3 dogs that bark at 7 cats."
)
GREEDY_TOKENS = 10


def _chat_texts(tokenizer, n: int = 8) -> list[str]:
    animals = {"cat": "meow", "dog": "woof", "cow": "moo", "owl": "hoot"}
    texts = []
    for i in range(n):
        animal = list(animals)[i % 4]
        messages = [
            {"role": "system", "content": ["You are a farm assistant.", "Answer briefly.", "Be brief."][i % 3]},
            {"role": "user", "content": f"What sound does a {animal} make? ({i})"},
            {"role": "assistant", "content": f"On the farm, the {animal} says {animals[animal]} all day long."},
        ]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return texts


def _train_briefly(model_dir: Path, steps: int = 60) -> None:
    """A few full-model steps on the chat data: the next-token choices stop
    being near-ties, so greedy decoding compares something."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = tokenizer(_chat_texts(tokenizer), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir, safe_serialization=True)


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """Base (tiny Llama, briefly trained) + a LoRA adapter, merged as a job's export merges it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from worker.models.catalog import load_causal_lm

    tmp = tmp_path_factory.mktemp("gguf-llama")
    base_dir = build_tiny_llama(tmp / "base", smollm2_tokenizer_dir, **TRAINED_CONFIG)
    _train_briefly(base_dir)
    base = resolve_base_model("tiny", str(base_dir), tmp)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(load_causal_lm(base, dtype=torch.float32), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.02)
    peft_model.save_pretrained(tmp / "adapter")
    return merge_adapter(base, tmp / "adapter", tmp / "merged")


@pytest.fixture(scope="module")
def exports(merged_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gguf-files")
    files, facts = {}, None
    for quantization in ("f16", "q8_0", "q4_k_m"):
        files[quantization] = out / f"tiny-{quantization}.gguf"
        facts = write_gguf(merged_dir, files[quantization], quantization, name="tiny")
    return {"files": files, "facts": facts}


@pytest.fixture(scope="module")
def hf(merged_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(merged_dir)


@contextmanager
def loaded(path: Path, **kwargs):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False, **kwargs)
    try:
        yield llm
    finally:
        llm.close()


def llama_cpp_chat_prompt(llm, messages: list[dict]) -> str:
    """The prompt llama.cpp's C API renders from the GGUF's own chat template."""
    template = llama_cpp.llama_model_chat_template(llm.model, None)
    assert template, "the GGUF has no chat template"
    encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(messages))()
    for message, (role, content) in zip(chat, encoded):
        message.role, message.content = role, content
    buffer = ctypes.create_string_buffer(16384)
    length = llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, buffer, len(buffer))
    assert 0 < length < len(buffer)
    return buffer.raw[:length].decode()


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def llama_cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], float]:
    """Greedy tokens, and the smallest lead of a chosen token over the runner-up."""
    import torch

    sequence, lead = list(ids), float("inf")
    with torch.no_grad():
        for _ in range(n):
            top = model(torch.tensor([sequence])).logits[0, -1].topk(2)
            sequence.append(int(top.indices[0]))
            lead = min(lead, float(top.values[0] - top.values[1]))
    return sequence[len(ids):], lead


def hf_chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean KL(reference || other)) of next-token distributions."""
    def log_softmax(logits):
        shifted = logits - logits.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    p_log, q_log = log_softmax(reference), log_softmax(other)
    kl = (np.exp(p_log) * (p_log - q_log)).sum(-1)
    return float((reference.argmax(-1) == other.argmax(-1)).mean()), float(kl.mean())


# ---------------------------------------------------------------- the llama


@pytest.mark.slow
def test_the_gguf_carries_the_model_and_the_tokenizer(exports, merged_dir):
    import gguf

    reader = gguf.GGUFReader(exports["files"]["f16"])
    fields = {name: field.contents() for name, field in reader.fields.items() if name != "tokenizer.ggml.merges"}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.embedding_length"] == 256 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == 2 and fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == (merged_dir / "chat_template.jinja").read_text()
    types = fields["tokenizer.ggml.token_type"]
    assert types[1] == gguf.TokenType.CONTROL and types[100] == gguf.TokenType.NORMAL  # <|im_start|>, a word piece
    names = {tensor.name for tensor in reader.tensors}
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names
    q8 = {t.name: t.tensor_type.name for t in gguf.GGUFReader(exports["files"]["q8_0"]).tensors}
    assert q8["blk.0.attn_q.weight"] == "Q8_0" and q8["blk.0.attn_norm.weight"] == "F32"
    q4 = {t.name: t.tensor_type.name for t in gguf.GGUFReader(exports["files"]["q4_k_m"]).tensors}
    assert q4["blk.0.attn_q.weight"] in ("Q4_K", "Q5_K", "Q6_K") and "Q4_K" in q4.values()


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_the_tokenizer(exports, hf):
    _, tokenizer = hf
    with loaded(exports["files"]["f16"], vocab_only=True) as llm:
        for text in TOKENIZER_TEXTS:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text


@pytest.mark.slow
def test_llama_cpp_renders_the_chat_prompt_as_the_tokenizer_does(exports, hf):
    _, tokenizer = hf
    with loaded(exports["files"]["f16"], vocab_only=True) as llm:
        for messages in CHATS:
            rendered = llama_cpp_chat_prompt(llm, messages)
            assert llm.tokenize(rendered.encode(), add_bos=True, special=True) == hf_chat_ids(tokenizer, messages)
        # llama.cpp's built-in ChatML does not know this template's default
        # system prompt; llama-cpp-python (and `llama-cli --jinja`) run the
        # GGUF's template itself, which does.
        formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|im_start|>",
        )
        for messages in [*CHATS, NO_SYSTEM]:
            prompt = formatter(messages=messages).prompt
            assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == hf_chat_ids(tokenizer, messages)


@pytest.mark.slow
def test_the_f16_file_decodes_greedily_as_the_merged_model(exports, hf):
    model, tokenizer = hf
    with loaded(exports["files"]["f16"]) as llm:
        for messages in [*CHATS, NO_SYSTEM]:
            ids = hf_chat_ids(tokenizer, messages)
            expected, lead = hf_greedy(model, ids, GREEDY_TOKENS)
            assert llama_cpp_greedy(llm, ids, GREEDY_TOKENS) == expected
            # No near-tie decided it: f16 rounding moves these logits by about 1e-3.
            assert lead > 0.01, (messages, expected, lead)


@pytest.mark.slow
def test_quantized_files_agree_with_the_f16_one(exports, hf):
    import torch

    model, tokenizer = hf
    ids = tokenizer(FIXED_TEXT, add_special_tokens=False)["input_ids"]
    with loaded(exports["files"]["f16"]) as llm:
        f16 = llama_cpp_logits(llm, ids)
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().numpy()
    top1, kl = agreement(reference, f16)
    assert top1 == 1.0 and kl < 1e-4, (top1, kl)
    for quantization, (min_top1, max_kl) in TOLERANCES.items():
        with loaded(exports["files"][quantization]) as llm:
            top1, kl = agreement(f16, llama_cpp_logits(llm, ids))
        assert top1 >= min_top1 and kl <= max_kl, (quantization, top1, kl)


@pytest.mark.slow
def test_the_download_holds_the_gguf_a_modelfile_and_a_readme(exports, tmp_path):
    facts = exports["facts"]
    text = modelfile("tiny.gguf", facts, system="You are a farm assistant.")
    assert text.startswith("FROM ./tiny.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'SYSTEM """You are a farm assistant."""' in text
    assert "{{ .Content }}<|im_end|>" in text  # ChatML, spelt out for Ollama
    # Without a trained system prompt, the template's own default stands in.
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile("tiny.gguf", facts, None)
    archive_path = tmp_path / "download.zip"
    archive_path.write_bytes(b"".join(gguf_zip(exports["files"]["q8_0"], "tiny.gguf", text, "# readme\n", {"card.md": b"card"})))
    with zipfile.ZipFile(archive_path) as archive:
        assert archive.namelist() == ["README.md", "Modelfile", "card.md", "tiny.gguf"]
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
        assert archive.read("tiny.gguf") == exports["files"]["q8_0"].read_bytes()
        assert archive.read("Modelfile").decode() == text


# ------------------------------------------------------ other architectures


def _trained_bpe_tokenizer(dest: Path, pattern: str, *, ignore_merges: bool) -> Path:
    """A small byte-level BPE tokenizer with this Split regex (as Qwen2's and
    Llama 3's tokenizer.json have), ChatML special tokens and template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [f"What sound does a {a} make? ({i}) It says {s}! 1234 ünï 東京" for i in range(200)
              for a, s in [("cat", "meow"), ("dog", "woof"), ("cow", "moo")]]
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    fast.save_pretrained(dest)
    return dest


def sharpen_attention(model_dir: Path) -> None:
    """A random model attends almost evenly, whatever the positions: larger
    query and key weights (and biases, zero at init) make its logits depend
    on the rotary embeddings, so a wrong rotary layout or scaling shows."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(8.0)
            elif name.endswith("_proj.bias"):
                parameter.copy_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(model_dir, safe_serialization=True)


@pytest.mark.parametrize(
    "model_type, pre, config",
    [
        ("qwen2", "qwen2", dict(tie_word_embeddings=False)),
        ("mistral", "llama-bpe", dict(tie_word_embeddings=False, sliding_window=None)),
    ],
)
def test_qwen2_and_mistral_load_in_llama_cpp_with_the_logits_of_transformers(tmp_path, model_type, pre, config):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from worker.models import gguf_export

    pattern = gguf_export._QWEN2_SPLIT if model_type == "qwen2" else gguf_export._LLAMA3_SPLIT
    tokenizer_dir = _trained_bpe_tokenizer(tmp_path / "tokenizer", pattern, ignore_merges=pre == "llama-bpe")
    model_dir = build_tiny_llama(
        tmp_path / model_type, tokenizer_dir, config_class=type(AutoConfig.for_model(model_type)), **config
    )
    sharpen_attention(model_dir)
    out = tmp_path / f"{model_type}.gguf"
    facts = write_gguf(model_dir, out, "f16", name=model_type)
    assert facts.pre == pre and facts.chatml and facts.stop_strings == ["<|im_end|>"]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = FIXED_TEXT + " 2024 ünï 東京 café"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with loaded(out) as llm:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        names = {name for name in llm.metadata}
        assert f"{'qwen2' if model_type == 'qwen2' else 'llama'}.context_length" in names
        logits = llama_cpp_logits(llm, ids)
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(logits - reference).max() < 0.02 * np.abs(reference).max()
    top1, kl = agreement(reference, logits)
    assert top1 >= 0.97 and kl < 1e-3, (top1, kl)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 32},
    ],
    ids=["linear", "llama3"],
)
def test_scaled_rotary_embeddings_give_the_logits_of_transformers(tmp_path, smollm2_tokenizer_dir, rope):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_llama(tmp_path / "scaled", smollm2_tokenizer_dir, rope_parameters={"rope_theta": 10000.0, **rope})
    sharpen_attention(model_dir)
    out = tmp_path / "scaled.gguf"
    write_gguf(model_dir, out, "f16", name="scaled")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = list(range(100, 300))  # far past the original 32 positions
    with loaded(out) as llm:
        logits = llama_cpp_logits(llm, ids)
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(logits - reference).max() < 0.02 * np.abs(reference).max()


# ---------------------------------------------------------------- refusals


@pytest.mark.slow
def test_an_unsupported_architecture_is_refused_by_name(tmp_path, merged_dir):
    folder = tmp_path / "phi"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    with pytest.raises(GGUFExportError) as refused:
        write_gguf(folder, tmp_path / "out.gguf", "q8_0", name="x")
    assert refused.value.code == "unsupported_architecture" and "'phi3'" in refused.value.message
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.slow
def test_a_sentencepiece_style_tokenizer_is_refused(merged_dir, tmp_path):
    import shutil

    folder = shutil.copytree(merged_dir, tmp_path / "sp")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["model"]["byte_fallback"] = True
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(GGUFExportError) as refused:
        write_gguf(folder, tmp_path / "out.gguf", "f16", name="x")
    assert refused.value.code == "unsupported_tokenizer" and "SentencePiece" in refused.value.message


def test_an_unknown_pre_tokenizer_is_refused():
    with pytest.raises(GGUFExportError, match="pre-tokenizer"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
    ]}}) == "smollm"


@pytest.mark.slow
def test_q4_k_m_without_llama_cpp_fails_clearly_and_writes_nothing(merged_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # as on a worker without the `export` extra
    with pytest.raises(GGUFExportError) as refused:
        write_gguf(merged_dir, tmp_path / "out.gguf", "q4_k_m", name="x")
    assert refused.value.code == "quantizer_unavailable" and "export" in refused.value.message
    assert list(tmp_path.iterdir()) == []
