"""Moving from a hosted provider, end to end: a second tunehouse (tests/peer.py)
plays the provider, with a fine-tune of its own; the service under test (a
worker on every queue, the embedded parts) reaches it through a connection,
plans, moves (files downloaded and validated, the job created and trained),
and compares the provider's fine-tune with the new one. A proxy in front of
the peer plays a provider that refuses files' content: the user's own copy is
matched by name, size and line count. Bad input changes nothing; another user
sees none of it."""

import json
import subprocess
import sys
from contextlib import contextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.api.files.test_endpoints import upload
from tests.api.test_cli import clean_env
from tests.conftest import free_port, start_uvicorn, wait_for
from tests.e2e import TINY, tiny_chat_jsonl, tiny_service_with_worker, wait_until_done
from tests.peer import running_peer

pytestmark = pytest.mark.slow

TRAIN = tiny_chat_jsonl(24)
VALIDATION = tiny_chat_jsonl(10)  # the fewest a fine-tune file may have
COMPARE_TIMEOUT = 240


@pytest.fixture(scope="module")
def provider(tmp_path_factory, tiny_model_dir):
    """The peer, and a fine-tune on it with a validation file (succeeded)."""
    with running_peer(tmp_path_factory.mktemp("provider"), tiny_model_dir, training=True) as peer:
        training = peer.upload(TRAIN, filename="support-train.jsonl")
        validation = peer.upload(VALIDATION, filename="support-valid.jsonl")
        with peer.client() as client:
            response = client.post("/v1/fine_tuning/jobs", json={
                "model": TINY, "training_file": training["id"], "validation_file": validation["id"],
                "suffix": "support", "seed": 7, "metadata": {"team": "support"},
                "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 4}})
            assert response.status_code == 200, response.text
            job = wait_until_done(client, response.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        yield peer, job, training, validation


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def moving(request, tmp_path_factory, tiny_model_dir):
    with tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, "moves") as service:
        yield service


@contextmanager
def refusing_proxy(target: str):
    """An HTTP proxy to `target` that answers 400 for files' content, as OpenAI
    does for fine-tune files ("Not allowed to download files of purpose: fine-tune")."""

    async def forward(request: Request) -> Response:
        if request.method == "GET" and "/files/" in request.url.path and request.url.path.endswith("/content"):
            return JSONResponse(status_code=400, content={"error": {
                "message": "Not allowed to download files of purpose: fine-tune", "type": "invalid_request_error",
                "param": None, "code": None}})
        async with httpx.AsyncClient(timeout=60) as client:
            upstream = await client.request(
                request.method, target + request.url.path, params=request.query_params,
                headers={name: value for name in ("authorization", "content-type")
                         if (value := request.headers.get(name))},
                content=await request.body())
        return Response(upstream.content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type"))

    port = free_port()
    server, thread = start_uvicorn(Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])]), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def connect(client, name: str, base_url: str, api_key: str) -> None:
    response = client.post("/v1/connections", json={"name": name, "base_url": base_url, "api_key": api_key})
    assert response.status_code == 200, response.text


def what_user_has(client) -> tuple[list[str], list[str]]:
    files = [file["id"] for file in client.get("/v1/files").json()["data"]]
    jobs = [job["id"] for job in client.get("/v1/fine_tuning/jobs").json()["data"]]
    return files, jobs


def by_field(planned_job: dict) -> dict:
    return {entry["field"]: entry for entry in planned_job["mapping"]}


def test_plan_move_train_and_compare_with_the_providers_fine_tune(moving, provider):
    peer, provider_job, training, validation = provider
    user = moving.make_user("mover")
    with moving.client(user.key) as client:
        connect(client, "provider", peer.base_url, peer.api_key)

        plan = client.post("/v1/moves/plan", json={"connection": "provider", "base_model": TINY})
        assert plan.status_code == 200, plan.text
        [planned] = plan.json()["jobs"]
        assert (planned["provider_job_id"], planned["provider_model"]) == (provider_job["id"],
                                                                           provider_job["fine_tuned_model"])
        assert planned["movable"] and planned["fine_tuning_job_id"] is None
        assert [(f["role"], f["provider_file_id"], f["filename"], f["bytes"], f["lines"], f["state"])
                for f in planned["files"]] == [
            ("training", training["id"], "support-train.jsonl", len(TRAIN), 24, "downloadable"),
            ("validation", validation["id"], "support-valid.jsonl", len(VALIDATION), 10, "downloadable")]
        mapping = by_field(planned)
        assert mapping["n_epochs"]["value"] == 1 and mapping["n_epochs"]["reason"].startswith("carried over")
        # Another tunehouse: its multiplier scales the same base rate.
        assert mapping["learning_rate_multiplier"]["value"] == 4
        assert mapping["model"]["value"] == TINY
        assert mapping["fine_tuned_model"]["value"] == f"conn:provider/{provider_job['fine_tuned_model']}"
        assert client.get("/v1/fine_tuning/jobs").json()["data"] == []  # a plan changes nothing

        moved = client.post("/v1/moves", json={"connection": "provider", "base_model": TINY,
                                               "jobs": [provider_job["id"]]})
        assert moved.status_code == 200, moved.text
        [result] = moved.json()["jobs"]
        assert result["created"] is True
        job = client.get(f"/v1/fine_tuning/jobs/{result['fine_tuning_job_id']}").json()
        assert (job["training_file"], job["validation_file"]) == (result["training_file"], result["validation_file"])
        assert job["metadata"] == {"team": "support", "moved_from.connection": "provider",
                                   "moved_from.provider_job_id": provider_job["id"],
                                   "moved_from.provider_model": provider_job["fine_tuned_model"]}
        assert (job["seed"], job["user_provided_suffix"]) == (7, "support")
        assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 1
        for file_id, content, lines in ((job["training_file"], TRAIN, 24), (job["validation_file"], VALIDATION, 10)):
            assert client.get(f"/v1/files/{file_id}/content").content == content
            assert client.get(f"/v1/files/{file_id}").json()["report"]["lines"] == lines

        # Again: the job is found by its origin, the files by name, size and lines.
        files_before = what_user_has(client)
        again = client.post("/v1/moves", json={"connection": "provider", "base_model": TINY,
                                               "jobs": [provider_job["id"]]})
        assert again.status_code == 200, again.text
        assert again.json()["jobs"][0] | {"created": True} == result and not again.json()["jobs"][0]["created"]
        assert what_user_has(client) == files_before
        replanned = client.post("/v1/moves/plan", json={"connection": "provider", "base_model": TINY}).json()
        assert replanned["jobs"][0]["fine_tuning_job_id"] == job["id"]
        assert {f["state"] for f in replanned["jobs"][0]["files"]} == {"matched"}

        early = client.post("/v1/moves/compare", json={"fine_tuning_job_id": job["id"]})
        assert early.status_code in (200, 409)  # 409 unless the tiny job has already finished
        done = wait_until_done(client, job["id"])
        assert done["status"] == "succeeded", done["error"]

        compared = client.post("/v1/moves/compare", json={
            "fine_tuning_job_id": job["id"], "max_tokens": 8, "limit": 4,
            "judges": [{"kind": "pairwise", "model": TINY, "max_tokens": 4}]})
        assert compared.status_code == 200, compared.text
        external = f"conn:provider/{provider_job['fine_tuned_model']}"
        assert compared.json()["models"] == [external, done["fine_tuned_model"]]
        assert (compared.json()["file_id"], compared.json()["split"]) == (job["validation_file"], "all")
        evaluation = wait_for(lambda: (lambda e: e if e["status"] in ("succeeded", "failed") else None)(
            client.get(f"/v1/evaluations/{compared.json()['id']}").json()), COMPARE_TIMEOUT, "the comparison")
        assert evaluation["status"] == "succeeded", evaluation["error"]
        rows = [json.loads(line) for line in
                client.get(f"/v1/evaluations/{evaluation['id']}/predictions").text.splitlines()]
        assert len(rows) == 4
        for row in rows:  # both models' predictions, per held-out item
            assert isinstance(row[external], str) and isinstance(row[done["fine_tuned_model"]], str)
        # The judge asked for came along: each item's pair judged in both orders.
        assert [judge["kind"] for judge in evaluation["judges"]] == ["pairwise"]
        items = client.get(f"/v1/evaluations/{evaluation['id']}/items").json()["data"]
        assert len(items) == 4 and all(len(item["judgments"]) == 2 for item in items), items[0]

        listed = client.get("/v1/moves").json()
        assert [(m["id"], m["status"], m["comparison_evaluation_id"]) for m in listed["data"]] == [
            (job["id"], "succeeded", evaluation["id"])]
        assert listed["data"][0]["moved_from"] == {"connection": "provider", "provider_job_id": provider_job["id"],
                                                   "provider_model": provider_job["fine_tuned_model"]}

    # Another user sees none of it.
    other = moving.make_user("other")
    with moving.client(other.key) as client:
        assert client.get("/v1/moves").json()["data"] == []
        assert client.post("/v1/moves/compare", json={"fine_tuning_job_id": job["id"]}).status_code == 404
        response = client.post("/v1/moves/plan", json={"connection": "provider", "base_model": TINY})
        assert response.status_code == 404 and response.json()["error"]["param"] == "connection"


def test_a_provider_refusing_file_content_takes_the_users_copy_matched_by_name_size_and_lines(moving, provider):
    peer, provider_job, training, validation = provider
    user = moving.make_user("hosted")
    with moving.client(user.key) as client, refusing_proxy(peer.service.base_url) as proxy:
        connect(client, "hosted", f"{proxy}/v1", peer.api_key)
        body = {"connection": "hosted", "base_model": TINY, "jobs": [provider_job["id"]]}

        [planned] = client.post("/v1/moves/plan", json=body).json()["jobs"]
        assert [f["state"] for f in planned["files"]] == ["needs_upload", "needs_upload"]
        assert not planned["movable"] and "upload your copy" in planned["problem"]
        refused = client.post("/v1/moves", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "file_needs_upload"
        assert what_user_has(client) == ([], [])

        # A copy with the same name and size but other lines is not the provider's file.
        other = TRAIN.replace(b"(0)", b"(x)")
        assert len(other) == len(TRAIN)
        wrong = upload(client, other, filename="support-train.jsonl").json()
        mismatched = client.post("/v1/moves", json=body | {"uploads": {training["id"]: wrong["id"]}})
        assert mismatched.status_code == 400, mismatched.text  # the provider (a tunehouse) says its sha256 too
        assert mismatched.json()["error"]["code"] == "upload_mismatch"
        assert mismatched.json()["error"]["param"] == f"uploads.{training['id']}"
        assert what_user_has(client) == ([wrong["id"]], [])

        mine = upload(client, TRAIN, filename="support-train.jsonl").json()
        mine_valid = upload(client, VALIDATION, filename="support-valid.jsonl").json()
        [planned] = client.post("/v1/moves/plan", json=body).json()["jobs"]
        assert [(f["state"], f["file_id"]) for f in planned["files"]] == [("matched", mine["id"]),
                                                                          ("matched", mine_valid["id"])]
        moved = client.post("/v1/moves", json=body | {"uploads": {training["id"]: mine["id"]}})
        assert moved.status_code == 200, moved.text
        [result] = moved.json()["jobs"]
        assert (result["training_file"], result["validation_file"]) == (mine["id"], mine_valid["id"])
        # Only the move's own job; nothing downloaded. (Cancelled: this test does not need it trained.)
        assert client.post(f"/v1/fine_tuning/jobs/{result['fine_tuning_job_id']}/cancel").status_code in (200, 400)
        files, jobs = what_user_has(client)
        assert sorted(files) == sorted([wrong["id"], mine["id"], mine_valid["id"]]) and jobs == [
            result["fine_tuning_job_id"]]


def test_bad_input_is_refused_and_changes_nothing(moving, provider):
    peer, provider_job, training, _ = provider
    user = moving.make_user("careless")
    with moving.client(user.key) as client:
        connect(client, "provider", peer.base_url, peer.api_key)
        body = {"connection": "provider", "base_model": TINY, "jobs": [provider_job["id"]]}
        cases = [
            (body | {"connection": "nowhere"}, 404, "connection"),
            (body | {"jobs": ["ftjob-doesnotexist"]}, 404, "jobs[0]"),
            (body | {"base_model": "not-a-model"}, 400, "base_model"),
            (body | {"jobs": [provider_job["id"], provider_job["id"]]}, 400, "jobs"),
            (body | {"uploads": {"file-notthejobs": "file-x"}}, 400, "uploads.file-notthejobs"),
            (body | {"uploads": {training["id"]: "file-notmine"}}, 404, f"uploads.{training['id']}"),
        ]
        for request, status, param in cases:
            response = client.post("/v1/moves", json=request)
            assert response.status_code == status, (request, response.text)
            assert response.json()["error"]["param"] == param, response.text
        plan = client.post("/v1/moves/plan", json={"connection": "provider", "base_model": TINY,
                                                   "jobs": ["ftjob-doesnotexist"]})
        assert plan.status_code == 404 and plan.json()["error"]["code"] == "provider_job_not_found"
        assert client.post("/v1/moves", json=body | {"extra": 1}).status_code == 400
        assert client.post("/v1/moves/compare", json={"fine_tuning_job_id": "ftjob-nope"}).status_code == 404
        assert what_user_has(client) == ([], [])
        assert client.get("/v1/moves").json()["data"] == []


def test_tunehouse_move_plans_uploads_moves_and_compares(moving, provider, tmp_path):
    peer, provider_job, training, validation = provider
    user = moving.make_user("cli")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "support-train.jsonl").write_bytes(TRAIN.replace(b"(0)", b"(x)"))
    (tmp_path / "support-train.jsonl").write_bytes(TRAIN)
    (tmp_path / "support-valid.jsonl").write_bytes(VALIDATION)
    env = clean_env(moving.settings.data_dir) | moving.settings.as_env()

    def tunehouse_move(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "move", "--user", user.name, "--connection", "hosted",
             "--base-model", TINY, *args], env=env, capture_output=True, text=True, timeout=COMPARE_TIMEOUT + 60)

    with moving.client(user.key) as client, refusing_proxy(peer.service.base_url) as proxy:
        connect(client, "hosted", f"{proxy}/v1", peer.api_key)
        valid_copy = f"{validation['id']}={tmp_path / 'support-valid.jsonl'}"

        refused = tunehouse_move("--upload", f"{training['id']}={tmp_path / 'wrong' / 'support-train.jsonl'}",
                                 "--upload", valid_copy)
        assert refused.returncode == 2 and "does not match the provider's file" in refused.stderr, refused.stderr
        assert "needs_upload" in refused.stdout  # the plan came first
        assert what_user_has(client) == ([], [])  # its copies went too

        moved = tunehouse_move("--upload", f"{training['id']}={tmp_path / 'support-train.jsonl'}",
                               "--upload", valid_copy, "--compare", "--judge", f"pairwise={TINY}",
                               "--poll", "0.5", "--wait", str(COMPARE_TIMEOUT))
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "learning_rate_multiplier: 4 -> 4  (carried over" in moved.stdout
        [listed] = client.get("/v1/moves").json()["data"]
        assert f"{provider_job['id']} -> {listed['id']} (created" in moved.stdout
        assert listed["status"] == "succeeded" and listed["comparison_evaluation_id"]
        assert f"comparison {listed['comparison_evaluation_id']}: succeeded" in moved.stdout
        evaluation = client.get(f"/v1/evaluations/{listed['comparison_evaluation_id']}").json()
        assert evaluation["models"] == [f"conn:hosted/{provider_job['fine_tuned_model']}", listed["fine_tuned_model"]]
        assert evaluation["judges"][0]["model"] == TINY


def test_the_providers_jobs_are_read_page_by_page_and_a_provider_down_is_a_502(moving, provider, monkeypatch):
    peer = provider[0]
    # A provider user of its own with three jobs (cancelled at once: only their listing matters here).
    owner = peer.service.make_user("busy")
    with peer.service.client(owner.key) as client:
        file_id = upload(client, TRAIN).json()["id"]
        provider_jobs = []
        for seed in (1, 2, 3):
            job = client.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "seed": seed})
            assert job.status_code == 200, job.text
            client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")
            provider_jobs.append(job.json()["id"])
    monkeypatch.setattr("domain.moves.service.PAGE", 1)  # the service runs in this process
    user = moving.make_user("pages")
    with moving.client(user.key) as client:
        connect(client, "busy", peer.base_url, owner.key)
        plan = client.post("/v1/moves/plan", json={"connection": "busy", "base_model": TINY})
        assert plan.status_code == 200, plan.text
        assert [job["provider_job_id"] for job in plan.json()["jobs"]] == provider_jobs[::-1]  # newest first
        assert all(job["provider_model"] is None for job in plan.json()["jobs"])

        connect(client, "down", f"http://127.0.0.1:{free_port()}/v1", "sk-secret-down-key")
    # The provider is not there: 502 (a client without the suite's no-5xx hook), the key not in it.
    with httpx.Client(base_url=moving.base_url, headers={"Authorization": f"Bearer {user.key}"}, timeout=60) as raw:
        down = raw.post("/v1/moves/plan", json={"connection": "down", "base_model": TINY})
        assert down.status_code == 502, down.text
        assert down.json()["error"]["code"] == "provider_connection_error" and "sk-secret" not in down.text
        moved = raw.post("/v1/moves", json={"connection": "down", "base_model": TINY, "jobs": ["ftjob-x"]})
        assert moved.status_code == 502 and "sk-secret" not in moved.text
        assert raw.get("/v1/fine_tuning/jobs").json()["data"] == [] and raw.get("/v1/files").json()["data"] == []
