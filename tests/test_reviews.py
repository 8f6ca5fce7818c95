"""The review loop (issue 28, item 6) through the real gateway (embedded backend, a real SQLite log):

- ads answered `review` wait in GET /v1/reviews/queue, oldest first, paged by the cursor the previous page
  returned; a reviewer's feedback closes one; passed and blocked ads never enter it;
- the queue carries the copy and the picture (stored for review ads only, served with its media type), and
  nothing of the ad when the setting review_store_ads is off;
- the metrics: answered ads per suggestion (automation and review rates) and, at feedback time, whether the
  reviewer agreed with an automatic pass or block (reviewed precision per model and version);
- a share of automatic passes and blocks (review_sample_rate) joins the queue as an audit sample, drawn from
  the request id alone, with the ad kept for the reviewer;
- `adaudit db prune-review-items` deletes old kept ads (reviewed ones unless --open-items), nothing else;
- bad input (an unknown cursor, a limit out of range, a picture never kept) is a 4xx JSON error.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from typer.testing import CliRunner
from test_service import audit_json, metric, model_dir, png, settings  # noqa: F401

from adaudit.cli import app as cli
from adaudit.service.app import create_app
from adaudit.service.decision_log import drawn_for_review, now

# with the student (it leans approve / none) and the default policy: a review term, a block term, nothing
REVIEW, BLOCK, PASS = "最近上新，最火单品，第一次购买立减", "全網第一，ＮＯ．１国货", "平价好物，欢迎选购"


def post(client, copy: str, colour: str = "red") -> dict:
    answer = audit_json(client, image=png(colour=colour), copy=copy)
    assert answer.status_code == 200, answer.text
    return answer.json()


def queue(client, **params) -> dict:
    page = client.get("/v1/reviews/queue", params=params)
    assert page.status_code == 200, page.text
    return page.json()


def test_the_queue_pages_oldest_first_and_feedback_closes_an_item(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path))) as client:
        reviews = [post(client, REVIEW, colour) for colour in ("red", "green", "blue")]
        decided = [post(client, BLOCK), post(client, PASS)]
        assert [a["suggestion"] for a in reviews + decided] == ["review"] * 3 + ["block", "pass"]
        first = queue(client, limit=2)
        second = queue(client, limit=2, after=first["next"])
        assert [i["request_id"] for i in first["items"] + second["items"]] == [a["request_id"] for a in reviews]
        assert first["next"] == reviews[1]["request_id"] and second["next"] is None
        item = first["items"][0]
        assert (item["copy"], item["suggestion"], item["term_hits"]) == (REVIEW, "review", reviews[0]["term_hits"])
        assert item["scores"] == reviews[0]["scores"] and item["reasons"] == reviews[0]["reasons"]
        picture = client.get(item["picture_url"])
        assert (picture.status_code, picture.headers["content-type"], picture.content) == (200, "image/png", png())
        assert client.get(f"/v1/reviews/{second['items'][0]['request_id']}/picture").content == png(colour="blue")

        feedback = client.post(f"/v1/audits/{reviews[0]['request_id']}/feedback",
                               json={"labels": {"verdict": "reject", "violation": "exaggeration"}, "reviewer": "ann"})
        assert feedback.status_code == 200, feedback.text
        left = queue(client)
        assert [i["request_id"] for i in left["items"]] == [a["request_id"] for a in reviews[1:]]
        # a page that starts after a closed item still finds its place
        assert [i["request_id"] for i in queue(client, after=reviews[0]["request_id"])["items"]] == \
            [a["request_id"] for a in reviews[1:]]
        stored = create_engine(settings(model_dir, tmp_path).database_url).connect().execute(
            text("SELECT request_id, media_type FROM review_items")).all()
        assert sorted(stored) == sorted((a["request_id"], "image/png") for a in reviews)  # review ads only


def test_review_rate_automation_and_reviewed_precision_metrics(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path))) as client:
        answers = [post(client, copy) for copy in (REVIEW, REVIEW, BLOCK, PASS, PASS)]
        counted = {s: metric(client, "adaudit_suggestions_total", model="student", suggestion=s)
                   for s in ("pass", "review", "block")}
        assert counted == {"pass": 2.0, "review": 2.0, "block": 1.0}
        for answer, labels in [(answers[2], {"verdict": "reject", "violation": "exaggeration"}),  # block agreed
                               (answers[3], {"verdict": "reject"}),  # pass overruled
                               (answers[4], {"violation": "none"}),  # pass agreed (none: approve)
                               (answers[0], {"verdict": "approve"})]:  # review: the model leaned approve
            assert client.post(f"/v1/audits/{answer['request_id']}/feedback",
                               json={"labels": labels}).status_code == 200
        outcomes = {(s, o): metric(client, "adaudit_reviewed_suggestions_total", model="student", version="1",
                                   suggestion=s, outcome=o)
                    for s in ("pass", "block", "review") for o in ("agreed", "overruled")}
        assert outcomes == {("pass", "agreed"): 1.0, ("pass", "overruled"): 1.0, ("block", "agreed"): 1.0,
                            ("block", "overruled"): 0.0, ("review", "agreed"): 1.0, ("review", "overruled"): 0.0}


def test_with_review_store_ads_off_the_queue_carries_no_ad(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path, review_store_ads=False))) as client:
        answer = post(client, REVIEW)
        (item,) = queue(client)["items"]
        assert (item["request_id"], item["copy"], item["picture_url"]) == (answer["request_id"], None, None)
        missing = client.get(f"/v1/reviews/{answer['request_id']}/picture")
        assert missing.status_code == 404 and missing.json()["kind"] == "unknown_review_item"


def test_bad_queue_requests_are_4xx_json(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path))) as client:
        passed = post(client, PASS)
        unknown = client.get("/v1/reviews/queue", params={"after": "no-such-request"})
        assert unknown.status_code == 422 and unknown.json()["kind"] == "unknown_cursor"
        for limit in (0, 201, "many"):
            bad = client.get("/v1/reviews/queue", params={"limit": limit})
            assert bad.status_code == 422 and bad.json()["kind"] == "invalid_request", bad.text
        never_kept = client.get(f"/v1/reviews/{passed['request_id']}/picture")
        assert never_kept.status_code == 404 and set(never_kept.json()) >= {"error", "kind"}
        assert queue(client) == {"items": [], "next": None}


def test_a_share_of_automatic_decisions_joins_the_queue_as_an_audit_sample(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path, review_sample_rate=0.5))) as client:
        answers = [post(client, copy, colour) for _ in range(2) for copy in (PASS, BLOCK)
                   for colour in ("red", "green", "blue")]
        answers.append(post(client, REVIEW))
        drawn = [a for a in answers[:-1] if drawn_for_review(a["request_id"], 0.5)]
        assert 0 < len(drawn) < 12  # 12 automatic decisions at one half: neither none nor all (p = 2 / 4096)
        items = queue(client)["items"]
        assert [i["request_id"] for i in items] == [a["request_id"] for a in drawn] + [answers[-1]["request_id"]]
        assert [i["queued"] for i in items] == ["sample"] * len(drawn) + ["review"]
        assert [i["suggestion"] for i in items[:-1]] == [a["suggestion"] for a in drawn]  # the answer stays
        assert all(a["suggestion"] in ("pass", "block") for a in drawn)
        picture = client.get(items[0]["picture_url"])  # the reviewer sees the sampled ad too
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
        # reviewing the sample closes it and counts toward the reviewed precision of automatic decisions
        verdict = "approve" if drawn[0]["suggestion"] == "pass" else "reject"
        assert client.post(f"/v1/audits/{drawn[0]['request_id']}/feedback",
                           json={"labels": {"verdict": verdict}}).status_code == 200
        assert drawn[0]["request_id"] not in [i["request_id"] for i in queue(client)["items"]]
        assert metric(client, "adaudit_reviewed_suggestions_total", model="student", version="1",
                      suggestion=drawn[0]["suggestion"], outcome="agreed") == 1.0


def test_the_draw_is_the_request_ids_and_follows_the_rate():
    ids = [f"{n:032x}" for n in range(4000)]
    assert not any(drawn_for_review(i, 0.0) for i in ids) and all(drawn_for_review(i, 1.0) for i in ids)
    share = sum(drawn_for_review(i, 0.1) for i in ids) / len(ids)
    assert 0.08 < share < 0.12  # binomial: 4000 draws at 0.1 have a standard deviation of 0.005
    assert [drawn_for_review(i, 0.1) for i in ids[:50]] == [drawn_for_review(i, 0.1) for i in ids[:50]]


def test_pruning_deletes_old_kept_ads_and_keeps_decisions(model_dir, tmp_path):  # noqa: F811
    chosen = settings(model_dir, tmp_path)
    with TestClient(create_app(chosen)) as client:
        reviewed, waiting, recent = post(client, REVIEW, "red"), post(client, REVIEW, "green"), post(client, REVIEW)
        assert client.post(f"/v1/audits/{reviewed['request_id']}/feedback",
                           json={"labels": {"verdict": "approve"}}).status_code == 200
    engine = create_engine(chosen.database_url)
    with engine.begin() as connection:  # two of them logged 40 days ago
        connection.execute(text("UPDATE review_items SET created_at = :old WHERE request_id != :recent"),
                           {"old": now() - timedelta(days=40), "recent": recent["request_id"]})

    def kept() -> set[str]:
        with engine.connect() as connection:
            return {r for (r,) in connection.execute(text("SELECT request_id FROM review_items"))}

    def prune(*options: str):
        result = CliRunner().invoke(cli, ["db", "prune-review-items", "--database-url", chosen.database_url,
                                          *options])
        assert result.exit_code == 0, result.output
        return result.output

    assert "deleted 1 review items" in prune("--older-than-days", "30")  # the reviewed one alone
    assert kept() == {waiting["request_id"], recent["request_id"]}
    assert "deleted 1 review items" in prune("--older-than-days", "30", "--open-items")
    assert kept() == {recent["request_id"]}
    with engine.connect() as connection:  # every decision and the feedback stay
        assert connection.execute(text("SELECT count(*) FROM decisions")).scalar() == 3
        assert connection.execute(text("SELECT count(*) FROM feedback")).scalar() == 1
    bad = CliRunner().invoke(cli, ["db", "prune-review-items", "--older-than-days", "-1"])
    assert bad.exit_code != 0 and "older-than-days" in bad.output
