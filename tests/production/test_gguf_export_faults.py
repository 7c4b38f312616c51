"""A GGUF export on the production stack whose worker is killed while it
uploads the file: the export stays running under the dead worker's lease,
then another worker makes it anew (attempt 2) and the download loads in
llama.cpp. (As tests/production/test_faults.py tests the merged weights.)"""

import io
import zipfile

import psycopg
import pytest

from tests.conftest import wait_for
from tests.e2e import start_job, wait_until_done
from tests.production.test_faults import TIMEOUT, train_only_jsonl, training_worker, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp", reason="the `export` extra (llama-cpp-python) loads the exports")

GGUF_UPLOAD = rb"(PUT|POST) /\S*/gguf-q8_0\.zip"


def test_a_gguf_export_whose_worker_is_killed_is_redone_by_another(training_worker, user, tmp_path):  # noqa: F811
    stack = training_worker
    job = wait_until_done(user, start_job(user, train_only_jsonl(), n_epochs=1, batch_size=4)["id"])
    assert job["status"] == "succeeded", job["error"]
    url = f"/v1/fine_tuning/jobs/{job['id']}/gguf"
    stack.storage_proxy.cut_on(GGUF_UPLOAD)
    try:
        assert user.get(url).status_code == 202
        assert stack.storage_proxy.triggered.wait(TIMEOUT), "the worker never uploaded the GGUF download"
        stack.workers.kill(stack.training_worker)
    finally:
        stack.storage_proxy.restore()
    pending = user.get(url)
    assert pending.status_code == 202 and pending.json()["status"] == "running"  # held by a dead worker
    assert pending.json()["stage"] == "uploading the GGUF download"

    stack.training_worker = stack.workers.start("train,default")

    def ready():
        response = user.get(url)
        return response if response.status_code == 200 else None

    archive = zipfile.ZipFile(io.BytesIO(wait_for(ready, TIMEOUT, "the GGUF export to be redone", interval=0.5).content))
    [name] = [name for name in archive.namelist() if name.endswith(".gguf")]
    archive.extract(name, tmp_path)
    llm = llama_cpp.Llama(model_path=str(tmp_path / name), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(b"<|im_start|>user", add_bos=False, special=True)[0] == 1
    finally:
        llm.close()
    with psycopg.connect(stack.database_url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        assert connection.execute(
            "SELECT status, attempt FROM exports WHERE job_id = %s AND format = 'gguf-q8_0'", (job["id"],)
        ).fetchone() == ("ready", 2)
