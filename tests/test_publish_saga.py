"""Media uploads and the publish-with-media saga: moderation passes, rejects, or is down."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import text

from app import create_app
from sagas.bootstrap import build_services
from sagas.services.media import media_dir
from tests.conftest import fetch_all
from tests.test_promote_saga import settle

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


def upload(client, account, data=PNG, filename="cat.png", content_type="text/plain"):
    return client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(data), filename, content_type)},
        headers=account.auth,
        content_type="multipart/form-data",
    )


@pytest.fixture
def people(client, make_account, project_all):
    author, fan = make_account("author"), make_account("fan")
    client.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
    for account in (author, fan):
        client.get("/api/v1/timelines/home", headers=account.auth)
    project_all()
    return author, fan


def test_an_upload_is_typed_by_its_bytes_not_by_the_client(client, people):
    author, _ = people
    r = upload(client, author, content_type="text/plain")
    assert r.status_code == 201
    assert r.get_json()["content_type"] == "image/png" and r.get_json()["size"] == len(PNG)
    served = client.get(f"/api/v1/media/{r.get_json()['id']}", headers=author.auth)
    assert served.status_code == 200 and served.data == PNG and served.mimetype == "image/png"


@pytest.mark.parametrize("fate", ["published", "rejected"])
def test_media_is_its_owners_alone_until_its_post_is_published(app, client, people, fate):
    """Unattached, pending and rejected media: the owner only (anyone else: 404, as if there
    were none), never kept by a shared cache. Published: anyone, cacheable."""
    author, fan = people
    media_id = upload(client, author).get_json()["id"]
    url = f"/api/v1/media/{media_id}"

    def who_sees() -> dict:
        answers = {
            "owner": client.get(url, headers=author.auth),
            "other": client.get(url, headers=fan.auth),
            "anyone": client.get(url),
        }
        return {who: (r.status_code, r.headers.get("Cache-Control")) for who, r in answers.items()}

    private = {"owner": (200, "max-age=3600, private"), "other": (404, None), "anyone": (404, None)}
    assert who_sees() == private  # unattached
    body = "look" if fate == "published" else "buy at scamlink now"
    client.post("/api/v1/posts", json={"body": body, "media_ids": [media_id]}, headers=author.auth)
    assert who_sees() == private  # pending moderation
    settle(app)

    if fate == "rejected":
        assert who_sees() == private
    else:
        assert {who: seen[0] for who, seen in who_sees().items()} == dict.fromkeys(
            ("owner", "other", "anyone"), 200
        )
        assert "private" not in client.get(url).headers["Cache-Control"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"just some text, not an image", 422),
        (b"", 422),
        (b"\x89PNG\r\n\x1a\n" + b"0" * (5 * 1024 * 1024), 413),
    ],
)
def test_bad_uploads_are_refused(client, engine, people, data, status):
    author, _ = people
    r = upload(client, author, data=data)
    assert r.status_code == status
    assert r.mimetype == "application/problem+json"
    assert fetch_all(engine, "SELECT * FROM media") == []


def test_an_upload_needs_a_file_and_a_token(client, people):
    author, _ = people
    assert (
        client.post(
            "/api/v1/media", data={}, headers=author.auth, content_type="multipart/form-data"
        ).status_code
        == 422
    )
    assert (
        client.post(
            "/api/v1/media",
            data={"file": (io.BytesIO(PNG), "a.png")},
            content_type="multipart/form-data",
        ).status_code
        == 401
    )


def test_a_post_with_media_is_pending_then_published_to_followers(app, client, engine, people):
    author, fan = people
    media_id = upload(client, author).get_json()["id"]

    r = client.post(
        "/api/v1/posts", json={"body": "look", "media_ids": [media_id]}, headers=author.auth
    )

    assert r.status_code == 202
    pending = r.get_json()
    assert pending["status"] == "pending" and pending["saga_id"]
    assert pending["media"][0]["id"] == media_id
    settle(app)
    saga = client.get(f"/api/v1/sagas/{pending['saga_id']}", headers=author.auth).get_json()
    assert saga["status"] == "completed"
    feed = client.get("/api/v1/timelines/home", headers=fan.auth).get_json()["items"]
    assert [p["id"] for p in feed] == [pending["id"]]
    assert feed[0]["status"] == "published"
    assert feed[0]["media"][0]["content_type"] == "image/png"
    assert fetch_all(engine, "SELECT status, post_id::text FROM media") == [
        {"status": "attached", "post_id": pending["id"]}
    ]
    kinds = [
        n["kind"]
        for n in client.get("/api/v1/notifications", headers=author.auth).get_json()["items"]
    ]
    assert kinds == ["post_published"]
    # the rebuilt read model has the same media
    before = client.get(f"/api/v1/posts/{pending['id']}").get_json()
    app.extensions["feed"].redis.flushdb()
    assert client.get(f"/api/v1/posts/{pending['id']}").get_json() == before


def test_a_rejected_post_has_its_media_detached_and_its_author_notified(
    app, client, engine, people
):
    author, fan = people
    media_id = upload(client, author).get_json()["id"]
    r = client.post(
        "/api/v1/posts",
        json={"body": "buy at scamlink now", "media_ids": [media_id]},
        headers=author.auth,
    )
    post_id, saga_id = r.get_json()["id"], r.get_json()["saga_id"]
    settle(app)

    saga = client.get(f"/api/v1/sagas/{saga_id}", headers=author.auth).get_json()
    assert saga["status"] == "compensated" and "banned words" in saga["last_error"]
    assert fetch_all(engine, "SELECT status FROM posts WHERE id = :id", id=int(post_id)) == [
        {"status": "rejected"}
    ]
    assert fetch_all(engine, "SELECT status, post_id FROM media") == [
        {"status": "uploaded", "post_id": None}
    ]
    notes = client.get("/api/v1/notifications", headers=author.auth).get_json()["items"]
    assert [n["kind"] for n in notes] == ["post_rejected"]
    assert client.get(f"/api/v1/posts/{post_id}").status_code == 404
    assert client.get("/api/v1/timelines/home", headers=fan.auth).get_json()["items"] == []
    # the media can be used again
    again = client.post(
        "/api/v1/posts", json={"body": "a cat", "media_ids": [media_id]}, headers=author.auth
    )
    assert again.status_code == 202


def test_moderation_down_retries_then_compensates(settings, clean_state, make_account):
    down = settings.with_overrides(moderation_failure_rate=1.0)
    app = create_app(services=build_services(down))
    client = app.test_client()
    author = make_account("author")
    media_id = upload(client, author).get_json()["id"]
    r = client.post(
        "/api/v1/posts", json={"body": "hello", "media_ids": [media_id]}, headers=author.auth
    )
    settle(app, rounds=80)
    saga = client.get(f"/api/v1/sagas/{r.get_json()['saga_id']}", headers=author.auth).get_json()
    app.extensions["feed"].close()
    assert saga["status"] == "compensated"
    moderation = [s for s in saga["steps"] if s["name"] == "moderate"]
    assert len(moderation) == 5 and all(s["status"] == "failed" for s in moderation)


@pytest.mark.parametrize("media_ids", [["not-a-uuid"], ["00000000-0000-0000-0000-000000000000"]])
def test_unknown_media_is_422(client, engine, people, media_ids):
    author, _ = people
    r = client.post(
        "/api/v1/posts", json={"body": "x", "media_ids": media_ids}, headers=author.auth
    )
    assert r.status_code == 422 and "media_ids" in r.get_json()["errors"]
    assert fetch_all(engine, "SELECT * FROM sagas") == []


def test_someone_elses_media_cannot_be_attached(client, people):
    author, fan = people
    media_id = upload(client, author).get_json()["id"]
    r = client.post(
        "/api/v1/posts", json={"body": "mine?", "media_ids": [media_id]}, headers=fan.auth
    )
    assert r.status_code == 422


def test_deleting_a_post_deletes_its_media(app, client, engine, people):
    author, _ = people
    media_id = upload(client, author).get_json()["id"]
    post = client.post(
        "/api/v1/posts", json={"body": "x", "media_ids": [media_id]}, headers=author.auth
    ).get_json()
    settle(app)
    assert client.delete(f"/api/v1/posts/{post['id']}", headers=author.auth).status_code == 204
    settle(app)
    assert fetch_all(engine, "SELECT status, post_id FROM media") == [
        {"status": "deleted", "post_id": None}
    ]
    assert client.get(f"/api/v1/media/{media_id}").status_code == 404


def test_the_media_quota_is_per_account(settings, clean_state, make_account, engine):
    small = settings.with_overrides(media_quota_bytes=len(PNG) * 2)
    app = create_app(services=build_services(small))
    client = app.test_client()
    ada, bob = make_account("ada_l"), make_account("bob_b")
    statuses = [upload(client, ada).status_code for _ in range(3)]
    other = upload(client, bob).status_code
    app.extensions["feed"].close()
    assert statuses == [201, 201, 422] and other == 201


def test_concurrent_uploads_never_pass_the_quota_together(settings, clean_state, make_account):
    """Issue 28: seven uploads at once with room for one were all accepted."""
    from tests.test_concurrency import run_together

    app = create_app(services=build_services(settings.with_overrides(media_quota_bytes=len(PNG))))
    ada = make_account("ada_l")
    responses = run_together(app, [lambda c: upload(c, ada) for _ in range(7)])
    app.extensions["feed"].close()
    assert sorted(r.status_code for r in responses) == [201] + [422] * 6


def test_uploads_left_unattached_for_a_day_are_swept(app, client, engine, people):
    """An upload never attached goes after MEDIA_UNATTACHED_HOURS, file and quota; one
    attached, or named by a post still in moderation, stays."""
    author, _ = people
    left, published, waiting = (upload(client, author).get_json()["id"] for _ in range(3))
    client.post("/api/v1/posts", json={"body": "a", "media_ids": [published]}, headers=author.auth)
    settle(app)
    client.post("/api/v1/posts", json={"body": "b", "media_ids": [waiting]}, headers=author.auth)
    with engine.begin() as conn:  # two days pass
        conn.execute(text("UPDATE media SET created_at = now() - interval '2 days'"))

    result = app.test_cli_runner().invoke(args=["media", "sweep"])

    assert result.exit_code == 0 and "deleted 1 unattached" in result.output
    status = {
        row["id"]: row["status"] for row in fetch_all(engine, "SELECT id::text, status FROM media")
    }
    assert status == {left: "deleted", published: "attached", waiting: "uploaded"}
    assert client.get(f"/api/v1/media/{left}", headers=author.auth).status_code == 404
    assert not (media_dir(app.extensions["feed"].settings) / left).exists()
    settle(app)  # the post in moderation still gets its media
    assert fetch_all(engine, "SELECT status FROM media WHERE id::text = :id", id=waiting) == [
        {"status": "attached"}
    ]


def test_a_deleted_posts_text_leaves_its_publish_sagas_data(app, client, engine, people):
    author, _ = people
    media_id = upload(client, author).get_json()["id"]
    posted = client.post(
        "/api/v1/posts",
        json={"body": "words to forget", "media_ids": [media_id]},
        headers=author.auth,
    )
    settle(app)
    assert fetch_all(engine, "SELECT data->>'body' AS body FROM sagas") == [
        {"body": "words to forget"}
    ]

    client.delete(f"/api/v1/posts/{posted.get_json()['id']}", headers=author.auth)
    settle(app)

    assert fetch_all(engine, "SELECT data->>'body' AS body FROM sagas") == [{"body": ""}]
    assert fetch_all(engine, "SELECT body FROM posts") == [{"body": ""}]
    # Issue 28: each step's recorded args kept the text.
    steps = fetch_all(engine, "SELECT command::text AS command FROM saga_steps")
    assert steps and not [s for s in steps if "words to forget" in s["command"]]


def test_a_repair_checks_what_each_kind_of_saga_touched(app, client, engine, people):
    """Each saga definition names the read-model keys it can change; a repair checks those."""
    from sagas import engine as saga_engine
    from sagas.repair import touched_keys

    author, fan = people
    media_id = upload(client, author).get_json()["id"]
    client.post("/api/v1/posts", json={"body": "cat", "media_ids": [media_id]}, headers=author.auth)
    client.delete("/api/v1/accounts/me", headers=fan.auth)
    settle(app)
    sagas = {row["type"]: row for row in fetch_all(engine, "SELECT * FROM sagas")}
    with engine.connect() as conn:
        published = touched_keys(conn, saga_engine.load(conn, sagas["publish_post"]["id"]).row)
        deleted = touched_keys(conn, saga_engine.load(conn, sagas["delete_account"]["id"]).row)
    post_id = int(sagas["publish_post"]["data"]["post_id"])
    assert published == sorted(
        {("post", post_id), ("posts", int(author.id)), ("feed", int(author.id))}
    )
    assert ("account", int(fan.id)) in deleted and ("posts", int(fan.id)) in deleted


def test_a_pending_post_read_while_it_waits_is_seen_by_all_once_published(app, client, people):
    """Reads of a pending post answer 404 and leave nothing behind that hides it once the
    saga publishes it: no tombstone in Redis, no remembered miss in the process."""
    author, fan = people
    media_id = upload(client, author).get_json()["id"]
    pending = client.post(
        "/api/v1/posts", json={"body": "wait for it", "media_ids": [media_id]}, headers=author.auth
    ).get_json()
    url = f"/api/v1/posts/{pending['id']}"
    for headers in (author.auth, fan.auth, {}):
        assert client.get(url, headers=headers).status_code == 404

    settle(app)

    for headers in (author.auth, fan.auth, {}):
        seen = client.get(url, headers=headers)
        assert seen.status_code == 200, seen.get_json()
        assert seen.get_json()["status"] == "published"
    listed = client.get(f"/api/v1/accounts/{author.id}/posts").get_json()["items"]
    assert [p["id"] for p in listed] == [pending["id"]]
    for account in (author, fan):
        home = client.get("/api/v1/timelines/home", headers=account.auth).get_json()["items"]
        assert [p["id"] for p in home] == [pending["id"]]


def test_a_tombstone_left_on_a_published_post_gives_way_to_it(app, client, people, project_all):
    """A tombstone stands only for a post PostgreSQL says is deleted: one left by an older
    version on a published post no longer makes every read of it a 503."""
    author, _ = people
    post = client.post("/api/v1/posts", json={"body": "here"}, headers=author.auth).get_json()
    project_all()
    redis = app.extensions["feed"].redis
    redis.delete(f"post:{{{post['id']}}}")
    redis.set(f"gone:{{{post['id']}}}", 1, ex=3600)

    seen = client.get(f"/api/v1/posts/{post['id']}")

    assert seen.status_code == 200, seen.get_json()
    assert not redis.exists(f"gone:{{{post['id']}}}")
