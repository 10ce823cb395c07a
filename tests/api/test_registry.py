"""The registry: model references, aliases with history, tags, archive, delete; scopes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from tests.api.conftest import bearer, error_code, make_key
from tests.api.registry_helpers import png, register_version


def predict(client: TestClient, ref: str):
    return client.post(f"/v1/models/{ref}/predict", files=[("files", ("a.png", png()))])


def test_a_version_is_found_by_id_by_number_and_by_alias(client, settings):
    v1 = register_version(settings, "pets")
    v2 = register_version(settings, "pets", ("a", "b", "c"))
    r = client.put("/v1/models/pets/aliases/prod", json={"version": 1})
    assert r.status_code == 200, r.text
    for ref, expected in ((v1["id"], v1), ("pets:2", v2), ("pets@prod", v1), ("pets%40prod", v1)):
        r = client.get(f"/v1/models/{ref}")
        assert r.status_code == 200, (ref, r.text)
        assert r.json()["id"] == expected["id"]
    assert client.get("/v1/models/pets:1").json()["aliases"] == ["prod"]
    r = client.get("/v1/models/pets@prod/download")
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('pets-v1.zip"')
    assert predict(client, "pets@prod").json()["model_id"] == v1["id"]
    assert predict(client, "pets:2").json()["model_id"] == v2["id"]


def test_bad_and_unknown_references_say_what_to_send(client, settings):
    register_version(settings, "pets")
    for ref in ("pets", "pets:0", "pets:x", "pe ts@prod", "@prod", "pets@", "not-a-uuid:"):
        r = client.get(f"/v1/models/{ref}")
        assert r.status_code == 422 and error_code(r) == "invalid_model_ref", (ref, r.text)
        assert "name@alias" in r.json()["error"]["message"]
    for ref in ("pets:9", "pets@prod", "cats:1", "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00"):
        r = client.get(f"/v1/models/{ref}")
        assert r.status_code == 404 and error_code(r) == "model_not_found", (ref, r.text)
    assert error_code(predict(client, "pets@prod")) == "model_not_found"


def test_alias_moves_are_recorded_with_who_when_from_and_to(client, settings):
    v1 = register_version(settings, "pets")
    v2 = register_version(settings, "pets")
    assert client.put("/v1/models/pets/aliases/prod", json={"version": 1}).status_code == 200
    r = client.put("/v1/models/pets/aliases/prod", json={"model_id": v2["id"]})
    assert r.status_code == 200
    body = r.json()
    assert (body["model_id"], body["version"], body["ref"]) == (v2["id"], 2, "pets@prod")
    assert body["updated_by"] == "admin"
    moves = [(e["from_model_id"], e["to_model_id"], e["actor"]) for e in body["history"]]
    assert moves == [(v1["id"], v2["id"], "admin"), (None, v1["id"], "admin")]
    # Pointing it where it already points records nothing.
    client.put("/v1/models/pets/aliases/prod", json={"version": 2})
    assert len(client.get("/v1/models/pets/aliases/prod").json()["history"]) == 2
    client.put("/v1/models/pets/aliases/canary", json={"version": 1})
    listed = client.get("/v1/models/pets/aliases").json()
    assert [(a["alias"], a["version"]) for a in listed] == [("canary", 1), ("prod", 2)]

    assert client.delete("/v1/models/pets/aliases/canary").status_code == 204
    assert error_code(client.get("/v1/models/pets/aliases/canary")) == "alias_not_found"
    assert error_code(client.get("/v1/models/pets@canary")) == "model_not_found"
    # The removal is history too: a re-created alias shows it.
    client.put("/v1/models/pets/aliases/canary", json={"version": 2})
    history = client.get("/v1/models/pets/aliases/canary").json()["history"]
    assert [(e["from_model_id"], e["to_model_id"]) for e in history] == [
        (None, v2["id"]),
        (v1["id"], None),
        (None, v1["id"]),
    ]


def test_alias_targets_are_checked(client, settings):
    register_version(settings, "pets")
    other = register_version(settings, "cars")
    r = client.put("/v1/models/pets/aliases/prod", json={"model_id": other["id"]})
    assert r.status_code == 422 and error_code(r) == "alias_target_invalid"
    r = client.put("/v1/models/pets/aliases/prod", json={"version": 7})
    assert r.status_code == 404 and error_code(r) == "model_not_found"
    for body in ({}, {"version": 1, "model_id": other["id"]}, {"version": 0}, {"tag": 1}):
        r = client.put("/v1/models/pets/aliases/prod", json=body)
        assert r.status_code == 422 and error_code(r) == "validation_error", body
    r = client.put("/v1/models/pets/aliases/bad@alias", json={"version": 1})
    assert r.status_code == 422 and error_code(r) == "validation_error"
    assert error_code(client.delete("/v1/models/pets/aliases/prod")) == "alias_not_found"


def test_tags_are_set_removed_and_filter_lists(client, settings):
    v1 = register_version(settings, "pets")
    v2 = register_version(settings, "pets")
    r = client.put("/v1/models/pets:1/tags/reviewed")
    assert r.status_code == 200 and r.json()["tags"] == ["reviewed"]
    client.put("/v1/models/pets:1/tags/reviewed")  # idempotent
    client.put(f"/v1/models/{v2['id']}/tags/candidate")
    listed = client.get("/v1/models", params={"tag": "reviewed"}).json()
    assert [m["id"] for m in listed["items"]] == [v1["id"]] and listed["total"] == 1
    everything = client.get("/v1/models").json()["items"]
    assert {m["id"]: m["tags"] for m in everything} == {
        v1["id"]: ["reviewed"],
        v2["id"]: ["candidate"],
    }
    assert client.delete("/v1/models/pets:1/tags/reviewed").json()["tags"] == []
    assert client.get("/v1/models", params={"tag": "reviewed"}).json()["total"] == 0
    r = client.put("/v1/models/pets:1/tags/not a tag")
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_archived_versions_leave_lists_but_still_predict(client, settings):
    v1 = register_version(settings, "pets")
    v2 = register_version(settings, "pets")
    client.put("/v1/models/pets/aliases/prod", json={"version": 2})
    r = client.post("/v1/models/pets:2/archive")
    assert r.status_code == 409 and error_code(r) == "model_aliased"
    assert r.json()["error"]["details"]["aliases"] == ["prod"]

    r = client.post("/v1/models/pets:1/archive")
    assert r.status_code == 200 and r.json()["archived_at"] is not None
    assert [m["id"] for m in client.get("/v1/models").json()["items"]] == [v2["id"]]
    every = client.get("/v1/models", params={"include_archived": True}).json()["items"]
    assert {m["id"] for m in every} == {v1["id"], v2["id"]}
    assert predict(client, "pets:1").json()["model_id"] == v1["id"]
    r = client.put("/v1/models/pets/aliases/prod", json={"version": 1})
    assert r.status_code == 409 and error_code(r) == "model_archived"
    assert client.get("/v1/models/pets@prod").json()["id"] == v2["id"]  # unchanged

    assert client.post("/v1/models/pets:1/unarchive").json()["archived_at"] is None
    assert client.get("/v1/models").json()["total"] == 2


def test_delete_is_refused_while_aliased_then_removes_row_and_files(client, settings):
    v1 = register_version(settings, "pets")
    client.put("/v1/models/pets/aliases/prod", json={"version": 1})
    client.put("/v1/models/pets:1/tags/reviewed")  # goes with the version (ON DELETE CASCADE)
    assert predict(client, "pets:1").status_code == 200  # loaded and resolved: both cached
    r = client.delete("/v1/models/pets:1")
    assert r.status_code == 409 and error_code(r) == "model_aliased"
    assert v1["folder"].is_dir()

    client.delete("/v1/models/pets/aliases/prod")
    assert client.delete("/v1/models/pets:1").status_code == 204
    assert not v1["folder"].exists()
    for ref in (v1["id"], "pets:1"):
        assert error_code(client.get(f"/v1/models/{ref}")) == "model_not_found"
        assert error_code(predict(client, ref)) == "model_not_found"
    assert client.get("/v1/models/pets/aliases").json() == []
    assert client.get("/v1/models", params={"tag": "reviewed"}).json()["total"] == 0


def test_registry_writes_need_train_and_reads_need_read(settings):
    register_version(settings, "pets")
    reader = bearer(make_key(settings, ["read"], name="reader"))
    trainer = bearer(make_key(settings, ["train"], name="ci-bot"))
    with TestClient(create_app(settings)) as c:
        writes = [
            ("PUT", "/v1/models/pets/aliases/prod", {"version": 1}),
            ("PUT", "/v1/models/pets:1/tags/x", None),
            ("POST", "/v1/models/pets:1/archive", None),
            ("DELETE", "/v1/models/pets:1", None),
        ]
        for method, path, body in writes:
            r = c.request(method, path, json=body, headers=reader)
            assert r.status_code == 403 and error_code(r) == "insufficient_scope", path
        r = c.put("/v1/models/pets/aliases/prod", json={"version": 1}, headers=trainer)
        assert r.status_code == 200 and r.json()["updated_by"] == "ci-bot"
        assert c.get("/v1/models/pets/aliases/prod", headers=reader).status_code == 200
        assert c.get("/v1/models/pets@prod", headers=reader).status_code == 200


def test_a_deleted_versions_number_is_never_given_again(client, settings):
    # Found in review: deleting a name's newest version freed its number, so the next job made
    # a different model answer to the same `pets:2` a deployment may have pinned.
    register_version(settings, "pets")
    v2 = register_version(settings, "pets", seed=1)
    assert v2["version"] == 2
    assert client.delete("/v1/models/pets:2").status_code == 204
    v3 = register_version(settings, "pets", seed=2)
    assert v3["version"] == 3
    assert error_code(client.get("/v1/models/pets:2")) == "model_not_found"
    assert client.get("/v1/models/pets:3").json()["id"] == v3["id"]
    # Numbers are per name: another name starts at 1.
    assert register_version(settings, "dogs")["version"] == 1
