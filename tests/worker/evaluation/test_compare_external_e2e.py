"""Evaluations beyond the deployment's own models, end to end in embedded mode:
the base model, a fine-tune trained here and a model of a second tunehouse
instance (tests/peer.py) reached through a connection, judged by LLM judges
(a deterministic OpenAI-compatible judge on loopback, tests/worker/evaluation/
judge_server.py, through a connection; and the tiny random model itself, whose
garbage answers must be counted invalid), then the error analysis: tags,
filters, the user's own tags and the filtered download. Faults of external
models (429 then success, a stall, an endpoint down) fail their items only."""

import csv
import io
import json

import pytest

from domain.evaluations.tags import AUTO_TAGS
from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.conftest import running_service, wait_for
from tests.e2e import Workers, tiny_chat_jsonl
from tests.peer import FaultyHttpProxy, running_peer
from tests.worker.evaluation.judge_server import MODEL as JUDGE_MODEL
from tests.worker.evaluation.judge_server import pairwise_verdict, reference_score, running_judge

TINY = "tiny-llama"
TIMEOUT = 240
PEER_MODEL = f"conn:peer/{TINY}"
JUDGE = f"conn:judge/{JUDGE_MODEL}"
ITEMS = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir):
    """A service with its workers, a peer, the judge server, a user with a
    fine-tune and connections to the peer and the judge."""
    tmp = tmp_path_factory.mktemp("compare-external")
    settings = Settings(
        data_dir=tmp / "here", base_models={TINY: f"path:{tiny_model_dir}"}, heartbeat_timeout=3.0,
        inference_batch_size=4, max_completion_tokens=16,
        # A stalled endpoint fails its item after this long; one retry keeps the down endpoint quick.
        connection_read_timeout=4.0, connection_max_attempts=2, connection_retry_max_wait=1.0,
    )
    with running_peer(tmp, tiny_model_dir) as peer, running_judge() as judge, \
            running_service("sqlite-local", settings) as service:
        workers = Workers(settings)
        workers.start("default,train")
        workers.start("inference")
        try:
            user = service.make_user("comparer")
            with service.client(user.key, follow_redirects=True) as client:
                for name, base_url, key in (("peer", peer.base_url, peer.api_key),
                                            ("judge", judge["base_url"], judge["api_key"])):
                    response = client.post("/v1/connections", json={"name": name, "base_url": base_url, "api_key": key})
                    assert response.status_code == 200, response.text
                file = upload(client, tiny_chat_jsonl(24)).json()
                response = client.post("/v1/fine_tuning/jobs", json={
                    "model": TINY, "training_file": file["id"], "seed": 5, "suffix": "cmp",
                    "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 4}})
                assert response.status_code == 200, response.text
                job = finished(client, f"/v1/fine_tuning/jobs/{response.json()['id']}")
                assert job["status"] == "succeeded", job["error"]
                uploaded = upload(client, tiny_chat_jsonl(20))  # the smallest file accepted; evaluations take ITEMS
                assert uploaded.status_code == 200, uploaded.text
                eval_file = uploaded.json()["id"]
                yield {"client": client, "fine_tune": job["fine_tuned_model"], "file": eval_file, "peer": peer,
                       "judge": judge, "service": service, "workers": workers}
        finally:
            workers.stop_all()


def finished(client, path: str) -> dict:
    def done():
        body = client.get(path).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, TIMEOUT, f"{path} to finish", interval=0.2)


def items_of(client, evaluation_id: str, **params) -> list[dict]:
    response = client.get(f"/v1/evaluations/{evaluation_id}/items", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_base_fine_tune_and_a_peer_model_judged_pairwise_give_ratings_with_intervals(compared):
    client, fine_tune = compared["client"], compared["fine_tune"]
    models = [TINY, fine_tune, PEER_MODEL]
    body = {"file_id": compared["file"], "split": "all", "limit": ITEMS, "models": models, "max_tokens": 8,
            "metrics": ["exact_match", "token_f1", "perplexity"],
            "judges": [{"kind": "pairwise", "model": JUDGE}, {"kind": "reference", "model": JUDGE}]}
    estimate = client.post("/v1/evaluations/estimate", json=body)
    assert estimate.status_code == 200, estimate.text
    assert {k: v for k, v in estimate.json().items() if k != "judge_prompt_tokens"} == {
        "object": "evaluation.estimate", "items": ITEMS, "generation_calls": ITEMS * 3,
        "judge_calls": ITEMS * 6 + ITEMS * 3, "external_calls": ITEMS + ITEMS * 9}
    assert estimate.json()["judge_prompt_tokens"] > ITEMS * 9 * 50
    judge_requests_before = compared["judge"]["requests"][0]

    created = client.post("/v1/evaluations", json=body)
    assert created.status_code == 200, created.text
    evaluation = finished(client, f"/v1/evaluations/{created.json()['id']}")
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert [j["model"] for j in evaluation["judges"]] == [JUDGE, JUDGE]
    assert compared["judge"]["requests"][0] - judge_requests_before == ITEMS * 9

    # Predictions hold all three models; the external one with latency and usage, no perplexity.
    rows = [json.loads(line) for line in client.get(f"/v1/evaluations/{evaluation['id']}/predictions").text.splitlines()]
    assert len(rows) == ITEMS
    for row in rows:
        for model in models:
            assert isinstance(row[model], str) and row[f"tags:{model}"] is not None
        assert row[f"latency_ms:{PEER_MODEL}"] > 0 and row[f"usage:{PEER_MODEL}"]["completion_tokens"] > 0
        assert row[f"perplexity:{PEER_MODEL}"] is None and row[f"perplexity:{TINY}"] > 1
        assert row[f"error:{PEER_MODEL}"] is None
    assert evaluation["results"][PEER_MODEL]["perplexity"] is None
    assert evaluation["results"][TINY]["perplexity"] > 1

    # Every judgment saved with its judge, prompt and raw answer, and read as the judge meant it.
    points = dict.fromkeys(models, 0.0)
    for row in rows:
        judgments = row["judgments"]
        assert len(judgments) == 6 + 3
        for judgment in judgments:
            assert judgment["judge"] == JUDGE and judgment["valid"] and judgment["raw"]
            assert row["reference"] in judgment["prompt"][-1]["content"]
            if judgment["kind"] == "pairwise":
                first, second = judgment["models"]
                expected = pairwise_verdict(row[first], row[second], row["reference"])
                assert judgment["winner"] == {"A": first, "B": second, "tie": "tie"}[expected]
                if judgment["winner"] == "tie":
                    points[first] += 0.5
                    points[second] += 0.5
                else:
                    points[judgment["winner"]] += 1
            else:
                [model] = judgment["models"]
                assert judgment["score"] == reference_score(row[model], row["reference"])
        assert sorted(j["order"] for j in judgments if j["kind"] == "pairwise") == [0, 0, 0, 1, 1, 1]

    pairwise = evaluation["pairwise"]
    assert [(p["model_a"], p["model_b"]) for p in pairwise] == [(TINY, fine_tune), (TINY, PEER_MODEL), (fine_tune, PEER_MODEL)]
    assert all(p["wins"] + p["ties"] + p["losses"] == ITEMS * 2 and p["invalid"] == 0 for p in pairwise)
    ratings = evaluation["ratings"]
    assert sorted(r["model"] for r in ratings) == sorted(models)
    for rating in ratings:
        assert rating["ci_low"] <= rating["rating"] <= rating["ci_high"]
        assert rating["games"] == ITEMS * 2 * 2
    # A round robin: Bradley–Terry ranks the models by the points the judge gave them.
    by_rating = [r["model"] for r in ratings]
    assert [points[m] for m in by_rating] == sorted(points.values(), reverse=True)
    # Worse than base: regressed, or a lower reference score than the base's.
    for row in rows:
        score = {j["models"][0]: j["score"] for j in row["judgments"] if j["kind"] == "reference"}
        worse = "regressed" in row[f"tags:{fine_tune}"] or score[fine_tune] < score[TINY]
        assert row["worse_than_base"] == ([fine_tune] if worse else [])
    listed = items_of(client, evaluation["id"], filter="worse_than_base")
    assert [i["item"] for i in listed] == [row["item"] for row in rows if row["worse_than_base"]]
    assert set(evaluation["tag_counts"]) == set(models)
    assert all(set(AUTO_TAGS) <= set(counts) for counts in evaluation["tag_counts"].values())

    # No key in anything the user reads back.
    texts = [json.dumps(evaluation), json.dumps(rows),
             client.get(f"/v1/evaluations/{evaluation['id']}/items/download", params={"format": "csv"}).text]
    texts += [process.log_path.read_text(errors="replace") for process in compared["workers"].processes]
    for key in (compared["peer"].api_key, compared["judge"]["api_key"]):
        assert all(key not in text for text in texts)


def test_a_tiny_random_judge_is_counted_invalid_and_the_error_analysis_works(compared):
    client, fine_tune = compared["client"], compared["fine_tune"]
    models = [TINY, fine_tune]
    created = client.post("/v1/evaluations", json={
        "file_id": compared["file"], "split": "all", "limit": ITEMS, "models": models, "max_tokens": 6,
        "metrics": ["token_f1"],
        "judges": [{"kind": "pairwise", "model": TINY, "max_tokens": 6}]})
    assert created.status_code == 200, created.text
    evaluation = finished(client, f"/v1/evaluations/{created.json()['id']}")
    assert evaluation["status"] == "succeeded", evaluation["error"]
    evaluation_id = evaluation["id"]
    [pair] = evaluation["pairwise"]
    items = items_of(client, evaluation_id)
    assert [item["item"] for item in items] == list(range(ITEMS))
    judgments = [j for item in items for j in item["judgments"]]
    assert len(judgments) == ITEMS * 2 and all(isinstance(j["raw"], str) and j["judge"] == TINY for j in judgments)
    invalid = sum(not j["valid"] for j in judgments)
    assert pair["invalid"] == invalid > 0, "a random model does not answer in the verdict's form"
    assert pair["wins"] + pair["ties"] + pair["losses"] + pair["invalid"] == ITEMS * 2
    if invalid == ITEMS * 2:
        assert evaluation["ratings"] == []

    # Automatic tags: counts match the items; a random model writing to max_tokens is cut off.
    counts = evaluation["tag_counts"]
    for model in models:
        for tag in AUTO_TAGS:
            assert counts[model][tag] == sum(tag in item["outputs"][model]["tags"] for item in items)
    cut = [item["item"] for item in items if item["outputs"][TINY]["finish_reason"] == "length"]
    assert cut and [i["item"] for i in items_of(client, evaluation_id, tag="cut_off", model=TINY)] == cut

    # Pages, filters.
    first = client.get(f"/v1/evaluations/{evaluation_id}/items", params={"limit": 2}).json()
    assert [i["item"] for i in first["data"]] == [0, 1] and first["has_more"] and first["last_id"] == "1"
    second = client.get(f"/v1/evaluations/{evaluation_id}/items", params={"limit": 2, "after": 1}).json()
    assert [i["item"] for i in second["data"]] == [2, 3]
    disagree = items_of(client, evaluation_id, filter="disagree")
    assert all(i["outputs"][TINY]["output"].strip().lower() != i["outputs"][fine_tune]["output"].strip().lower()
               for i in disagree)
    worse = items_of(client, evaluation_id, filter="worse_than_base")
    assert [i["item"] for i in worse] == [i["item"] for i in items if "regressed" in i["outputs"][fine_tune]["tags"]]

    # The user's own tags: stored, counted, filtered on, downloaded.
    tagged = client.put(f"/v1/evaluations/{evaluation_id}/items/3/tags", json={"model": fine_tune, "tags": ["wrong-unit", "look"]})
    assert tagged.status_code == 200, tagged.text
    assert tagged.json()["outputs"][fine_tune]["user_tags"] == ["wrong-unit", "look"]
    assert client.get(f"/v1/evaluations/{evaluation_id}").json()["tag_counts"][fine_tune]["wrong-unit"] == 1
    assert [i["item"] for i in items_of(client, evaluation_id, tag="wrong-unit")] == [3]
    assert items_of(client, evaluation_id, tag="wrong-unit", model=TINY) == []
    table = client.get(f"/v1/evaluations/{evaluation_id}/items/download", params={"format": "csv", "tag": "look"})
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(table.text)))
    assert row["item"] == "3" and row[f"user_tags:{fine_tune}"] == "wrong-unit,look"
    lines = client.get(f"/v1/evaluations/{evaluation_id}/items/download", params={"filter": "disagree"}).text.splitlines()
    assert [json.loads(line)["item"] for line in lines] == [i["item"] for i in disagree]
    cleared = client.put(f"/v1/evaluations/{evaluation_id}/items/3/tags", json={"model": fine_tune, "tags": []})
    assert cleared.json()["outputs"][fine_tune]["user_tags"] == []
    assert client.get(f"/v1/evaluations/{evaluation_id}").json()["tag_counts"][fine_tune].get("wrong-unit", 0) == 0

    # Bad input: a clear 4xx, nothing changed.
    for path, body, status, param in (
        ("items/3/tags", {"model": fine_tune, "tags": ["has space"]}, 400, "tags[0]"),
        ("items/3/tags", {"model": "nope", "tags": ["x"]}, 400, "model"),
        ("items/99/tags", {"model": fine_tune, "tags": ["x"]}, 404, "item"),
    ):
        response = client.put(f"/v1/evaluations/{evaluation_id}/{path}", json=body)
        assert response.status_code == status and response.json()["error"]["param"] == param, response.text
    assert client.get(f"/v1/evaluations/{evaluation_id}/items", params={"filter": "bogus"}).status_code == 400
    assert client.get(f"/v1/evaluations/{evaluation_id}/items", params={"model": "nope"}).status_code == 400


def test_external_faults_fail_their_items_only(compared):
    client, service = compared["client"], compared["service"]
    peer_port = int(compared["peer"].service.base_url.rsplit(":", 1)[1])
    proxy = FaultyHttpProxy(peer_port)
    closed = FaultyHttpProxy(peer_port)
    closed_url = closed.url
    closed.close()  # nothing listens there any more: the endpoint is down
    try:
        for name, url in (("flaky", proxy.url), ("down", closed_url)):
            response = client.post("/v1/connections", json={
                "name": name, "base_url": f"{url}/v1", "api_key": compared["peer"].api_key, "models": [TINY]})
            assert response.status_code == 200, response.text
        # One 429 (retried after Retry-After: that item succeeds) and one stall (that item times out).
        proxy.fail_next("429", "stall", retry_after=0.2)
        flaky, down = f"conn:flaky/{TINY}", f"conn:down/{TINY}"
        created = client.post("/v1/evaluations", json={
            "file_id": compared["file"], "split": "all", "models": [TINY, flaky, down], "limit": 3, "max_tokens": 4,
            "metrics": ["token_f1"]})
        assert created.status_code == 200, created.text
        evaluation = finished(client, f"/v1/evaluations/{created.json()['id']}")
        assert evaluation["status"] == "succeeded", evaluation["error"]
        items = items_of(client, evaluation["id"])
        assert proxy.faulted == 2
        errors = [item["outputs"][flaky]["error"] for item in items]
        assert [e["code"] for e in errors if e] == ["timeout"]
        assert sum(item["outputs"][flaky]["output"] is not None for item in items) == 2
        for item in items:
            assert item["outputs"][TINY]["output"] is not None and item["outputs"][TINY]["error"] is None
            assert item["outputs"][down]["output"] is None and item["outputs"][down]["error"]["code"] == "connection_error"
            assert item["outputs"][down]["tags"] == ["error"]
        assert evaluation["results"][down]["errors"] == 3 and evaluation["results"][flaky]["errors"] == 1
        assert evaluation["tag_counts"][down]["error"] == 3
        assert compared["peer"].api_key not in json.dumps(items)
    finally:
        proxy.close()
