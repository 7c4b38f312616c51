"""GGUF downloads made by a real `tunehouse worker` (embedded mode: SQLite,
filesystem broker, local storage), loaded by llama.cpp: a LoRA fine-tune of
the tiny Llama (q8_0 and q4_k_m), a full fine-tune (f16), and once SmolLM2,
whose q8_0 download answers a chat prompt formatted by the GGUF's own
template. (That a worker killed mid-export leaves it to be redone:
tests/production/test_gguf_export_faults.py.)"""

import io
import json
import zipfile
from pathlib import Path

import pytest

from tests.api.files.test_endpoints import upload
from tests.conftest import seed_converted_smollm2, wait_for
from tests.worker.models.test_gguf_export import llama_cpp_chat_prompt
from tests.e2e import BASE, JOB_TIMEOUT, start_job, tiny_chat_jsonl, tiny_service_with_worker, wait_until_done

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp", reason="the `export` extra (llama-cpp-python) loads the exports")

SYSTEM = "You are a farm assistant."
QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What sound does a cat make?"}]


def farm_jsonl(n: int = 12) -> bytes:
    """The tiny chat data, every example with one system prompt and in the
    train split (no automatic evaluation to wait for)."""
    lines = []
    for line in tiny_chat_jsonl(n).decode().splitlines():
        example = json.loads(line)
        lines.append({"messages": [{"role": "system", "content": SYSTEM}, *example["messages"]], "split": "TRAIN"})
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture(scope="module", params=["sqlite-local"])
def embedded(request, tmp_path_factory, tiny_model_dir):
    with tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, "gguf") as service:
        yield service


@pytest.fixture
def client(embedded):
    user = embedded.make_user("gguf")
    with embedded.client(user.key, follow_redirects=True) as http:
        yield http


def gguf_download(client, job_id: str, quantization: str, timeout: float = JOB_TIMEOUT) -> zipfile.ZipFile:
    """Asks until the export is ready: 202 (queued, then running) first, then the zip."""
    first = client.get(f"/v1/fine_tuning/jobs/{job_id}/gguf", params={"quantization": quantization})
    assert first.status_code == 202, first.text
    assert first.json()["status"] in ("queued", "running")

    def ready():
        response = client.get(f"/v1/fine_tuning/jobs/{job_id}/gguf", params={"quantization": quantization})
        assert response.status_code in (200, 202), response.text
        return response if response.status_code == 200 else None

    return zipfile.ZipFile(io.BytesIO(wait_for(ready, timeout, f"the {quantization} GGUF", interval=0.5).content))


def extract_gguf(archive: zipfile.ZipFile, folder: Path) -> Path:
    [name] = [name for name in archive.namelist() if name.endswith(".gguf")]
    archive.extract(name, folder)
    return folder / name


def llama_cpp_chat(path: Path, messages: list[dict], max_tokens: int = 12) -> tuple[list[int], str]:
    """The prompt llama.cpp renders from the GGUF's own template (C API),
    tokenized by llama.cpp, and its greedy answer to it."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False)
    try:
        prompt = llm.tokenize(llama_cpp_chat_prompt(llm, messages).encode(), add_bos=True, special=True)
        answer = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        return prompt, answer["choices"][0]["text"]
    finally:
        llm.close()


def hf_prompt_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_lora_fine_tune_downloads_as_gguf_with_its_system_prompt_in_the_modelfile(client, tiny_model_dir, tmp_path):
    job = wait_until_done(client, start_job(client, farm_jsonl(), n_epochs=1, batch_size=4)["id"])
    assert job["status"] == "succeeded", job["error"]
    archive = gguf_download(client, job["id"], "q8_0")
    names = archive.namelist()
    [gguf_name] = [name for name in names if name.endswith(".gguf")]
    assert sorted(names) == sorted(["README.md", "Modelfile", "training_curves.png", gguf_name])
    assert gguf_name == f"tiny-llama-{job['id']}-q8_0.gguf"
    assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    modelfile = archive.read("Modelfile").decode()
    assert modelfile.startswith(f"FROM ./{gguf_name}\n")
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    readme = archive.read("README.md").decode()
    assert f"ollama create {gguf_name.removesuffix('.gguf')} -f Modelfile" in readme and "llama-cli" in readme
    # The model card first (front matter, the hyperparameters), then how to run the file.
    assert readme.startswith("---\nbase_model: tiny-llama\n") and "learning_rate_multiplier" in readme

    path = extract_gguf(archive, tmp_path)
    prompt, _ = llama_cpp_chat(path, QUESTION)
    assert prompt == hf_prompt_ids(tiny_model_dir, QUESTION)
    # Served from storage the second time: the same bytes, no new export.
    again = client.get(f"/v1/fine_tuning/jobs/{job['id']}/gguf")
    assert again.status_code == 200 and zipfile.ZipFile(io.BytesIO(again.content)).read(gguf_name) == path.read_bytes()

    q4 = extract_gguf(gguf_download(client, job["id"], "q4_k_m"), tmp_path)
    import gguf

    assert gguf.GGUFReader(q4).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert llama_cpp_chat(q4, QUESTION)[0] == prompt


def test_a_full_fine_tune_downloads_as_gguf(client, tiny_model_dir, tmp_path):
    job = start_job(client, farm_jsonl(), n_epochs=1, batch_size=4, extra={"adapter": "full", "learning_rate": 1e-3})
    job = wait_until_done(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    path = extract_gguf(gguf_download(client, job["id"], "f16"), tmp_path)
    prompt, _ = llama_cpp_chat(path, QUESTION)
    assert prompt == hf_prompt_ids(tiny_model_dir, QUESTION)


def test_the_smollm2_q8_0_download_answers_a_chat_in_llama_cpp(client, embedded, tmp_path, converted_smollm2):
    seed_converted_smollm2(converted_smollm2, embedded.settings)
    file_id = upload(client, farm_jsonl(12)).json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": BASE, "training_file": file_id, "seed": 3, "hyperparameters": {"n_epochs": 1, "batch_size": 4}},
    ).json()
    job = wait_until_done(client, job["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    path = extract_gguf(gguf_download(client, job["id"], "q8_0", timeout=600), tmp_path)
    question = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]
    prompt, answer = llama_cpp_chat(path, question, max_tokens=16)
    converted = embedded.settings.work_dir / "base-models" / "smollm2-135m-instruct"
    assert prompt == hf_prompt_ids(converted, question)
    # The service's own answer (transformers, fp32, base + adapter): q8_0 starts it the same way.
    served = client.post(
        "/v1/chat/completions",
        json={"model": job["fine_tuned_model"], "messages": question, "max_tokens": 16, "temperature": 0},
    ).json()["choices"][0]["message"]["content"]
    assert answer.split()[:3] == served.split()[:3], (answer, served)

