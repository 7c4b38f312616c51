"""A merged model folder (safetensors + tokenizer files) written as one GGUF
file for llama.cpp and Ollama, with the Ollama Modelfile and a README beside
it in one zip.

f16 and q8_0 are written here with the `gguf` package; q4_k_m is made from
the f16 file by llama.cpp's own quantizer (llama-cpp-python, the `export`
extra). Supported: config.json model_type llama, mistral (both llama.cpp's
`llama` architecture) and qwen2, with a byte-level BPE tokenizer
(tokenizer.json). Everything else is refused with a code and a message that
names it, before anything is written.

llama.cpp's conventions this follows: its `llama` architecture applies
rotary embeddings to adjacent pairs of a head's dimensions, where the Hugging
Face layout rotates the two halves, so q_proj/k_proj rows are reordered
within each head; `qwen2` uses the halves layout and keeps them as they are
(with its q/k/v biases). Tied embeddings are written once (no output.weight).
1-D tensors (norms, biases) stay float32. Rotary scaling: linear (a factor in
the metadata) and Llama 3.1's (the rope_freqs tensor)."""

from __future__ import annotations

import ctypes
import io
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.exports.gguf import ARCHITECTURES, QUANTIZATIONS, unsupported_architecture_message
from worker.runs import RunFailure

log = logging.getLogger("tunehouse.worker")

# The pre-tokenizer regexes of the tokenizer.json files llama.cpp knows by
# name: the name makes llama.cpp split text the way that regex does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_PRE_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
_MARK = "\u2063tunehouse-{}\u2063"  # text no template adds or changes, to find where content lands


class GGUFExportError(RunFailure):
    """A model or tokenizer this export cannot write (code, message)."""


# ----------------------------------------------------------------- the model


@dataclass(frozen=True)
class Architecture:
    gguf_name: str  # llama.cpp's architecture name
    pairs_rotary: bool  # llama.cpp rotates adjacent pairs: reorder q/k rows


def architecture_of(config: Mapping[str, Any], model: str = "the model") -> Architecture:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise GGUFExportError("unsupported_architecture", unsupported_architecture_message(model_type, model))
    name = ARCHITECTURES[model_type]
    return Architecture(gguf_name=name, pairs_rotary=name == "llama")


def _rope_theta(config: Mapping[str, Any]) -> float:
    parameters = config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _rope_scaling(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The scaling of the rotary embeddings, None for plain ones."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    return None if kind == "default" else {**scaling, "rope_type": kind}


def _head_dim(config: Mapping[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _pairs_layout(weight, heads: int):
    """Rows of each head from the halves layout to llama.cpp's pairs layout:
    row i of the first half and row i of the second half become neighbours."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _safetensors_tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32 numpy array) for every tensor of the folder's safetensors files."""
    import torch
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GGUFExportError("export_failed", "The merged model folder has no safetensors weights.")
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).to(torch.float32).numpy()


# ------------------------------------------------------------- the tokenizer


@dataclass
class TokenizerFacts:
    """What llama.cpp needs to tokenize like the Hugging Face tokenizer, and
    what a chat front end needs to format and stop like it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    stop_strings: list[str] = field(default_factory=list)
    # The system prompt the template puts in when a conversation has none.
    default_system: str | None = None
    chatml: bool = False  # the template is plain ChatML (Ollama gets a TEMPLATE for it)


def pre_tokenizer_name(tokenizer_json: Mapping[str, Any]) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for the way this tokenizer.json
    splits text before BPE; refuses what llama.cpp would split differently."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]

    def byte_level(step, *, regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and not step.get("add_prefix_space") and bool(step.get("use_regex", True)) == regex

    if len(steps) == 1 and byte_level(steps[0], regex=True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level(steps[1], regex=True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and byte_level(steps[1], regex=False):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if steps[0].get("behavior") == "Isolated" and not steps[0].get("invert") and pattern in _SPLIT_PRE_NAMES:
            return _SPLIT_PRE_NAMES[pattern]
    raise GGUFExportError(
        "unsupported_tokenizer",
        f"The tokenizer splits text in a way this export does not map to llama.cpp (pre-tokenizer {json.dumps(pre)[:300]}); "
        "supported: GPT-2 byte-level, SmolLM, Llama 3 and Qwen2 pre-tokenizers.",
    )


def _check_bpe(tokenizer_json: Mapping[str, Any]) -> None:
    model = tokenizer_json.get("model") or {}
    normalizer = tokenizer_json.get("normalizer")
    sentencepiece_like = model.get("byte_fallback") or (normalizer or {}).get("type") in ("Sequence", "Prepend", "Replace")
    if model.get("type") != "BPE" or sentencepiece_like:
        kind = "SentencePiece-style (Llama 2 / Mistral v0.1)" if sentencepiece_like else repr(model.get("type"))
        raise GGUFExportError(
            "unsupported_tokenizer",
            f"GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3, Qwen2 use); "
            f"this model's tokenizer is {kind}.",
        )
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise GGUFExportError("unsupported_tokenizer", f"The tokenizer's normalizer {normalizer.get('type')!r} has no llama.cpp equivalent.")


def _merge_text(merge: Any) -> str:
    return merge if isinstance(merge, str) else " ".join(merge)


def tokenizer_facts(model_dir: Path, n_vocab: int) -> TokenizerFacts:
    """From the folder's tokenizer.json and tokenizer (transformers) files;
    `n_vocab`: the rows of the embedding matrix (ids past the tokenizer's
    own are padding llama.cpp must still have a token for)."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError("unsupported_tokenizer", "GGUF export needs a fast tokenizer (tokenizer.json); the model has none.")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    _check_bpe(tokenizer_json)
    pre = pre_tokenizer_name(tokenizer_json)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise GGUFExportError("export_failed", f"The tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} embeddings.")
    added = {id_: token for id_, token in tokenizer.added_tokens_decoder.items()}
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(TokenType.UNUSED)] * n_vocab
    for text, id_ in vocab.items():
        tokens[id_] = text
        if id_ in added:
            types[id_] = int(TokenType.CONTROL if added[id_].special else TokenType.USER_DEFINED)
        else:
            types[id_] = int(TokenType.NORMAL)
    merges = [_merge_text(merge) for merge in tokenizer_json["model"].get("merges", [])]

    with_specials = tokenizer("Hello", add_special_tokens=True)["input_ids"]
    plain = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos_id is not None and len(with_specials) > len(plain) and with_specials[0] == bos_id
    add_eos = eos_id is not None and len(with_specials) > len(plain) and with_specials[-1] == eos_id

    template = tokenizer.chat_template
    if isinstance(template, Mapping):  # named templates: the default one
        template = template.get("default")
    facts = TokenizerFacts(
        tokens=tokens, token_types=types, merges=merges, pre=pre,
        bos_id=bos_id, eos_id=eos_id, unk_id=tokenizer.unk_token_id, pad_id=tokenizer.pad_token_id,
        eot_id=None, add_bos=add_bos, add_eos=add_eos, chat_template=template,
    )
    if template:
        _read_template(tokenizer, facts, {id_ for id_, token in added.items() if token.special})
    stops = [tokenizer.convert_ids_to_tokens(id_) for id_ in (facts.eot_id, eos_id) if id_ is not None]
    facts.stop_strings = list(dict.fromkeys(stops))
    return facts


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _read_template(tokenizer, facts: TokenizerFacts, special_ids: set[int]) -> None:
    """By rendering marked conversations: the token that ends an assistant
    turn, the system prompt the template adds on its own, and whether it is
    plain ChatML. A template that refuses these conversations tells nothing."""
    user, system, answer = _MARK.format("user"), _MARK.format("system"), _MARK.format("answer")
    try:
        turn = _render(tokenizer, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], False)
        with_system = _render(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": user}], True)
        without_system = _render(tokenizer, [{"role": "user", "content": user}], True)
    except Exception as error:  # noqa: BLE001 - any template error means: nothing learned
        log.info("the chat template refused the probe conversations: %s", error)
        return
    after_answer = turn.split(answer, 1)[1] if answer in turn else ""
    specials = {tokenizer.convert_ids_to_tokens(id_): id_ for id_ in special_ids}
    ends = sorted((after_answer.find(text), id_) for text, id_ in specials.items() if text and text in after_answer)
    if ends:
        facts.eot_id = ends[0][1]
    # with_system = P + system + M + user + R; without one, a default system
    # prompt shows as P + D + M + user + R.
    if system in with_system and user in with_system:
        prefix, rest = with_system.split(system, 1)
        middle, tail = rest.split(user, 1)
        if without_system.startswith(prefix) and without_system.endswith(middle + user + tail):
            default = without_system[len(prefix): len(without_system) - len(middle + user + tail)]
            facts.default_system = default or None
    conversation = [
        {"role": "system", "content": system}, {"role": "user", "content": user},
        {"role": "assistant", "content": answer}, {"role": "user", "content": user},
    ]
    try:
        facts.chatml = _render(tokenizer, conversation, True) == _chatml(conversation)
    except Exception:  # noqa: BLE001
        facts.chatml = False


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


# --------------------------------------------------------------- the writing


def write_gguf(
    model_dir: Path, out_path: Path, quantization: str, *, name: str,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> TokenizerFacts:
    """Write `model_dir` (a transformers folder) as a GGUF file at `out_path`.
    Returns what was learnt of the tokenizer (for the Modelfile)."""
    if quantization not in QUANTIZATIONS:
        raise GGUFExportError("unsupported_format", f"Unknown GGUF quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}.")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = json.loads((model_dir / "config.json").read_text())
    architecture = architecture_of(config)
    if quantization == "q4_k_m":
        quantizer = _llama_cpp_quantizer()  # before the f16 file: refuse early when it cannot be made
        f16_path = out_path.with_name(out_path.stem + ".f16.gguf")
        facts = write_gguf(model_dir, f16_path, "f16", name=name, on_stage=on_stage)
        on_stage("quantizing with llama.cpp (q4_k_m)")
        try:
            quantizer(f16_path, out_path)
        finally:
            f16_path.unlink(missing_ok=True)
        return facts
    return _write(model_dir, out_path, quantization, config, architecture, name, on_stage)


def _write(model_dir, out_path, quantization, config, architecture, name, on_stage) -> TokenizerFacts:
    import gguf

    scaling = _rope_scaling(config)
    if scaling is not None and scaling["rope_type"] not in ("linear", "llama3"):
        raise GGUFExportError(
            "unsupported_architecture",
            f"GGUF export does not write the rotary scaling {scaling['rope_type']!r} of this model's config "
            "(supported: none, linear, llama3).",
        )
    on_stage(f"reading and converting the weights ({quantization})")
    blocks = int(config["num_hidden_layers"])
    heads, kv_heads = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or config["num_attention_heads"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if architecture.gguf_name == "llama" else gguf.MODEL_ARCH.QWEN2, blocks)
    tied = bool(config.get("tie_word_embeddings", False))
    tensors: list[tuple] = []
    n_vocab = None
    for hf_name, array in _safetensors_tensors(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError("unsupported_architecture", f"The weight {hf_name!r} has no place in llama.cpp's {architecture.gguf_name} architecture.")
        if architecture.pairs_rotary and re.search(r"self_attn\.[qk]_proj\.", hf_name):
            array = _pairs_layout(array, heads if ".q_proj." in hf_name else kv_heads)
        if gguf_name == "token_embd.weight":
            n_vocab = array.shape[0]
        # Converted as read: only the written form of each tensor is held.
        tensors.append((gguf_name, *_converted(array, quantization)))
    if n_vocab is None:
        raise GGUFExportError("export_failed", "The merged weights have no token embeddings.")
    if scaling is not None and scaling["rope_type"] == "llama3":
        tensors.append(("rope_freqs.weight", _llama3_frequency_factors(model_dir, config), None))

    on_stage("reading the tokenizer")
    facts = tokenizer_facts(model_dir, n_vocab)
    writer = gguf.GGUFWriter(out_path, architecture.gguf_name)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if quantization == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    _add_model_metadata(writer, config, name, n_vocab, file_type)
    if scaling is not None and scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    _add_tokenizer_metadata(writer, facts)

    for gguf_name, array, raw_dtype in tensors:
        writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
    on_stage("writing the GGUF file")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return facts


def _llama3_frequency_factors(model_dir: Path, config: Mapping[str, Any]):
    """Llama 3.1's rotary scaling as llama.cpp takes it: per frequency, what
    the plain frequency is divided by (the rope_freqs tensor). Computed from
    transformers' own scaled frequencies, so both scale alike."""
    import numpy as np
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim = _head_dim(config)
    plain = 1.0 / (_rope_theta(config) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](AutoConfig.from_pretrained(model_dir, trust_remote_code=False), "cpu")
    return (plain / scaled).numpy().astype(np.float32)


def _converted(array, quantization: str):
    """(the array as written, its GGML type when quantized): 1-D tensors
    (norms, biases) in f32, matrices in f16 or Q8_0 (rows of 32 values)."""
    import gguf
    import numpy as np

    if array.ndim == 1:
        return array.astype(np.float32), None
    if quantization == "q8_0" and array.shape[-1] % 32 == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def _add_model_metadata(writer, config, name: str, n_vocab: int, file_type) -> None:
    import gguf

    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_rope_dimension_count(head_dim)
    if head_dim * int(config["num_attention_heads"]) != int(config["hidden_size"]):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_tokenizer_metadata(writer, facts: TokenizerFacts) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(facts.pre)
    writer.add_token_list(facts.tokens)
    writer.add_token_types(facts.token_types)
    writer.add_token_merges(facts.merges)
    for id_, add in ((facts.bos_id, writer.add_bos_token_id), (facts.eos_id, writer.add_eos_token_id),
                     (facts.unk_id, writer.add_unk_token_id), (facts.pad_id, writer.add_pad_token_id),
                     (facts.eot_id, writer.add_eot_token_id)):
        if id_ is not None:
            add(int(id_))
    writer.add_add_bos_token(facts.add_bos)
    writer.add_add_eos_token(facts.add_eos)
    if facts.chat_template:
        writer.add_chat_template(facts.chat_template)


# ------------------------------------------------------- llama.cpp's quantizer


def _llama_cpp_quantizer() -> Callable[[Path, Path], None]:
    try:
        import llama_cpp
    except ImportError as error:  # optional: the `export` extra
        raise GGUFExportError(
            "quantizer_unavailable",
            "q4_k_m is made by llama.cpp's quantizer, which this worker does not have: install the `export` extra "
            "(pip install 'tunehouse[export]', i.e. llama-cpp-python). f16 and q8_0 exports work without it.",
        ) from error

    def quantize(source: Path, target: Path) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
        if status != 0 or not target.is_file():
            raise GGUFExportError("export_failed", f"llama.cpp's quantizer failed (status {status}).")

    return quantize


# ---------------------------------------------------------------- the download


def modelfile(gguf_name: str, facts: TokenizerFacts, system: str | None) -> str:
    """An Ollama Modelfile for the GGUF beside it. The chat template travels in
    the GGUF; a plain ChatML one is also spelt out, for Ollamas that would not
    recognise it. `system`: the system prompt the model was trained with (else
    the template's own default, so Ollama formats as the tokenizer does)."""
    lines = [f"FROM ./{gguf_name}", ""]
    if facts.chatml:
        lines += [
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
            "{{ .Content }}<|im_end|>",
            '{{ end }}<|im_start|>assistant',
            '"""',
            "",
        ]
    for stop in facts.stop_strings:
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    system = system if system is not None else facts.default_system
    if system:
        lines += ["", f'SYSTEM """{system.replace(chr(34) * 3, chr(39) * 3)}"""']
    return "\n".join(lines) + "\n"


def download_readme(name: str, gguf_name: str, quantization: str, system: str | None) -> str:
    system_note = (
        "\nThe model was trained with one system prompt in every example; the Modelfile sets it "
        "(`SYSTEM`). Use the same one with llama.cpp.\n"
        if system else ""
    )
    return f"""# {name} ({quantization} GGUF)

Exported by tunehouse for llama.cpp and Ollama. The chat template, the
tokenizer and the stop tokens are in the GGUF's metadata.

## Ollama

    ollama create {name} -f Modelfile && ollama run {name}

## llama.cpp

    llama-cli -m {gguf_name} --jinja -cnv

(`--jinja` formats the conversation with the GGUF's own chat template.)

## llama-cpp-python

```python
from llama_cpp import Llama

llm = Llama(model_path="{gguf_name}", n_ctx=2048)
print(llm.create_chat_completion(messages=[{{"role": "user", "content": "Hello!"}}])["choices"][0]["message"]["content"])
```
{system_note}"""


def gguf_zip(
    gguf_path: Path, gguf_name: str, modelfile_text: str, readme: str, extra_files: Mapping[str, bytes] | None = None,
) -> Iterator[bytes]:
    """The download, as chunks of a zip (stored, not deflated: quantized
    weights do not compress): the GGUF, the Modelfile, README.md and any
    `extra_files` (name -> content; e.g. a model card)."""
    buffer = _ChunkBuffer()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("README.md", readme)
        yield buffer.take()
        archive.writestr("Modelfile", modelfile_text)
        for extra_name, content in (extra_files or {}).items():
            archive.writestr(extra_name, content)
        yield buffer.take()
        with gguf_path.open("rb") as source, archive.open(gguf_name, "w", force_zip64=True) as target:
            while chunk := source.read(8 * 1024 * 1024):
                target.write(chunk)
                yield buffer.take()
    yield buffer.take()


class _ChunkBuffer(io.RawIOBase):
    """A write-only, non-seekable stream that hands out what was written:
    zipfile then streams (data descriptors) and the zip never sits whole in memory."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


def model_file_name(model: str, job_id: str, quantization: str) -> str:
    """A name Ollama accepts (lowercase letters, digits, dot, dash, underscore)."""
    base = re.sub(r"[^a-z0-9._-]+", "-", model.rsplit("/", 1)[-1].lower()).strip("-.") or "model"
    return f"{base}-{job_id.lower()}-{quantization}"
