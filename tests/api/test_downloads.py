"""Signed download links (both backends): asked for with the key, opened
without it; bound to one download and to the user who signed it; a changed
link is refused (403) and an expired one is gone (410); a download being
prepared answers its 202 instead of a link."""

import base64
import json
import time

from domain.exports.service import request_export
from domain.jobs.models import FineTuningJob
from domain.links import SignedLink, link_secret, sign_link
from tests.api.files.test_endpoints import upload
from tests.api.jobs.test_endpoints import create, training_file
from tests.chat_data import chat_jsonl
from tests.domain.jobs.test_model_card import recorded_job


def link_for(client, path: str) -> dict:
    response = client.post("/v1/downloads", json={"path": path})
    assert response.status_code == 200, response.text
    link = response.json()
    assert link["object"] == "download_link" and link["path"] == path
    assert time.time() < link["expires_at"] <= time.time() + 301
    return link


def test_a_link_downloads_without_the_key(service, alice, anonymous, alice_user):
    job = recorded_job(service, alice_user)
    link = link_for(alice, f"/v1/fine_tuning/jobs/{job.id}/adapter")
    assert link["url"].startswith(service.base_url + "/v1/downloads/")
    opened = anonymous.get(link["url"])
    assert opened.status_code == 200
    assert opened.content.startswith(b"PK") and f"{job.id}-adapter.zip" in opened.headers["content-disposition"]
    # A file's content, with the query kept: the same bytes as with the key.
    uploaded = upload(alice, chat_jsonl(20))
    assert uploaded.status_code == 200, uploaded.text
    content = anonymous.get(link_for(alice, f"/v1/files/{uploaded.json()['id']}/content")["url"])
    assert content.status_code == 200 and content.content == chat_jsonl(20)


def test_a_stored_download_streams_or_redirects_to_the_store(service, alice, anonymous, alice_user):
    job = recorded_job(service, alice_user)
    with service.state.sessionmaker() as session:
        export, _ = request_export(session, session.get(FineTuningJob, job.id), "merged")
        export.status, export.storage_key = "ready", f"jobs/{job.id}/merged.zip"
        session.commit()
    service.state.storage.put_bytes(f"jobs/{job.id}/merged.zip", b"merged weights")
    url = link_for(alice, f"/v1/fine_tuning/jobs/{job.id}/merged")["url"]
    opened = anonymous.get(url)
    if service.name == "postgres-s3":  # the endpoint's redirect to a presigned URL, which a browser follows
        assert opened.status_code == 307
        opened = anonymous.get(opened.headers["location"])
    assert opened.status_code == 200 and opened.content == b"merged weights"


def _tamper(token: str) -> list[str]:
    body, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))

    def with_claims(**changes) -> str:
        changed = json.dumps({**claims, **changes}, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(changed).rstrip(b"=").decode() + "." + mac

    flipped_mac = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    return [
        with_claims(u=claims["u"] + 1),  # another user
        with_claims(e=claims["e"] + 3600),  # a later expiry
        with_claims(p=claims["p"].replace("adapter", "merged")),  # another download of the job
        body + "." + flipped_mac,
        body,
        token + "x",
        "not-a-link",
    ]


def test_a_changed_link_is_refused(service, alice, anonymous, alice_user):
    job = recorded_job(service, alice_user)
    token = link_for(alice, f"/v1/fine_tuning/jobs/{job.id}/adapter")["url"].rsplit("/", 1)[-1]
    for changed in _tamper(token):
        refused = anonymous.get(f"/v1/downloads/{changed}")
        assert refused.status_code == 403, changed
        assert refused.json()["error"]["code"] == "invalid_link"
    assert anonymous.get(f"/v1/downloads/{token}").status_code == 200


def test_an_expired_link_is_gone(service, alice_user, anonymous):
    job = recorded_job(service, alice_user)
    secret = link_secret(service.settings)
    path = f"/v1/fine_tuning/jobs/{job.id}/adapter"
    expired = sign_link(secret, SignedLink(user_id=alice_user.id, path=path, expires_at=int(time.time()) - 1))
    gone = anonymous.get(f"/v1/downloads/{expired}")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "link_expired"
    fresh = sign_link(secret, SignedLink(user_id=alice_user.id, path=path, expires_at=int(time.time()) + 60))
    assert anonymous.get(f"/v1/downloads/{fresh}").status_code == 200


def test_a_link_opens_only_what_its_user_may_read(service, alice, bob, anonymous, alice_user, bob_user):
    alices = recorded_job(service, alice_user)
    bobs = recorded_job(service, bob_user)
    # Bob cannot have a link made to Alice's adapter...
    refused = bob.post("/v1/downloads", json={"path": f"/v1/fine_tuning/jobs/{alices.id}/adapter"})
    assert refused.status_code == 404
    # ...nor can a link signed for him open it: the download is made as him, at that moment.
    secret = link_secret(service.settings)
    forged = sign_link(secret, SignedLink(bob_user.id, f"/v1/fine_tuning/jobs/{alices.id}/adapter", int(time.time()) + 60))
    assert anonymous.get(f"/v1/downloads/{forged}").status_code == 404
    # His own link opens his own adapter only (changing its path is in test_a_changed_link_is_refused).
    own = anonymous.get(link_for(bob, f"/v1/fine_tuning/jobs/{bobs.id}/adapter")["url"])
    assert own.status_code == 200 and bobs.id in own.headers["content-disposition"]
    # A key sent with a link changes nothing: it is made as the link's user.
    with service.client(alice_user.key) as with_alices_key:
        assert with_alices_key.get(f"/v1/downloads/{forged}").status_code == 404


def test_what_is_not_ready_or_not_a_download_gets_no_link(service, alice, anonymous, alice_user):
    queued = create(alice, training_file=training_file(alice)).json()["id"]
    not_ready = alice.post("/v1/downloads", json={"path": f"/v1/fine_tuning/jobs/{queued}/adapter"})
    assert not_ready.status_code == 409 and not_ready.json()["error"]["code"] == "adapter_not_ready"
    # Merged weights being made: the download's own 202 and Retry-After, to poll here.
    job = recorded_job(service, alice_user)
    preparing = alice.post("/v1/downloads", json={"path": f"/v1/fine_tuning/jobs/{job.id}/merged"})
    assert preparing.status_code == 202 and preparing.headers["retry-after"]
    assert preparing.json()["status"] == "queued"
    for path in ("/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job.id}/cancel", "https://example.com/v1/files/x/content",
                 f"/v1/fine_tuning/jobs/{job.id}/../{job.id}/adapter"):
        bad = alice.post("/v1/downloads", json={"path": path})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_a_download", path
    assert anonymous.post("/v1/downloads", json={"path": f"/v1/fine_tuning/jobs/{job.id}/adapter"}).status_code == 401
