"""The reviewer console (/console) and the offline API docs (/docs, /redoc), in a real headless Chromium
(Debian's chromium and chromedriver, driven by Selenium) against a real uvicorn gateway on loopback with the
embedded backend and API keys on (issue 28, items 7 and 8):

- /docs and /redoc reference only the gateway's own assets, those answer 200 with JavaScript / CSS, and the
  pages render (swagger-ui and redoc draw the API's title) with every resource loaded from the gateway;
- the console asks for the key, shows the queue with the picture, the copy with its term hits marked, the
  suggestion and scores, and label buttons that are GET /v1/taxonomy's classes; a reviewer labels one ad with
  the keyboard (violation 2, Enter) and another (j, a, Enter): the feedback is stored with the reviewer's name
  and the queue shrinks; a wrong key is refused. With ADAUDIT_CONSOLE_SCREENSHOT=PATH the test saves its
  screenshot there (docs/console.png);
- served a model of another taxonomy (tests/test_taxonomy.py's), the route answers that taxonomy and the
  console labels in its names: keyboard feedback with its classes is stored;
- no class name of today's taxonomy is written into the console's files: they take every label from the route.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from test_reviews import BLOCK, PASS, REVIEW
from test_security import ALICE_KEY, KEYS
from test_service import b64, model_dir, settings  # noqa: F401
from test_taxonomy import CUSTOM, POLICY, custom_student  # noqa: F401

from adaudit.models.labels import DEFAULT_TAXONOMY
from adaudit.service.app import create_app
from loopback import ServerThread

CONSOLE = Path(__file__).resolve().parents[1] / "service" / "console"
LOCAL = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                     "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: what a policy refused
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, what: str, timeout: float = 30):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"waiting for {what}")


def advert(colour: str, label: str) -> bytes:
    """A small poster: a coloured background, a product box and a banner (what a reviewer looks at)."""
    picture = Image.new("RGB", (240, 180), colour)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((70, 40, 170, 140), fill="white", outline="black", width=3)
    draw.rectangle((0, 150, 240, 180), fill="black")
    draw.text((10, 158), label, fill="yellow")  # ASCII: PIL's default font has no CJK
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


# --- the offline API docs ---------------------------------------------------------------------------------
def test_docs_pages_reference_only_assets_the_gateway_serves(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path))) as client:
        for page, scripts in (("/docs", {"swagger-ui-bundle.js"}), ("/redoc", {"redoc.standalone.js"})):
            html = client.get(page)
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in html.headers["content-security-policy"]  # nothing else may load
            assets = {a or b for a, b in LOCAL.findall(html.text)}
            assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
            assert "cdn" not in html.text.lower() and "googleapis" not in html.text
            assert {a.rsplit("/", 1)[-1] for a in assets} >= scripts | {"openapi.json"}
            for asset in assets:
                answer = client.get(asset)
                assert answer.status_code == 200, asset
                if asset.endswith(".js"):
                    assert "javascript" in answer.headers["content-type"] and len(answer.content) > 100_000
                    assert answer.content.lstrip()[:1] in (b"/", b"!", b"(", b"\"", b"v")  # script, not an error page


def test_docs_pages_render_offline_in_chromium(model_dir, tmp_path, browser):  # noqa: F811
    with ServerThread(create_app(settings(model_dir, tmp_path))) as server:
        for page, title in (("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")):
            browser.get(server.url + page)
            heading = wait(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, title)
                                               if "adaudit audit gateway" in e.text], f"{page} to render")
            assert heading
            loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert any(url.startswith(server.url + "/static-offline-docs/") for url in loaded), loaded
            # anything else (redoc's bundle asks for its logo from a CDN) the page's policy refused to load
            refused = " ".join(entry["message"] for entry in browser.get_log("browser")
                               if "Content Security Policy" in entry["message"])
            assert all(url in refused for url in loaded if not url.startswith(server.url)), (loaded, refused)
        browser.get(server.url + "/docs")
        paths = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), "the operations")
        assert "/v1/reviews/queue" in {e.text.replace("\u200b", "") for e in paths}


# --- the reviewer console ---------------------------------------------------------------------------------
def test_the_console_names_no_class_of_the_default_taxonomy():
    """Every label the console shows or sends comes from GET /v1/taxonomy; a class name written into its files
    would be today's taxonomy's, wrong for a model trained on a data set's own labels.yaml. In the stylesheet only
    the selectors are read: its property values are CSS keywords (`display: none`), not labels."""
    names = {name for classes in DEFAULT_TAXONOMY.tasks.values() for name in classes}
    files = sorted(CONSOLE.iterdir())
    assert {path.name for path in files} >= {"index.html", "console.js", "console.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".css":
            text = re.sub(r"\{[^}]*\}", "{}", text)
        found = sorted(name for name in names if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text))
        assert not found, f"{path.name} names classes {found}"


def test_the_taxonomy_route_answers_503_while_the_primary_model_cannot_be_read(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path, primary_model="absent"))) as client:
        answer = client.get("/v1/taxonomy")
    assert answer.status_code == 503 and answer.json()["kind"] == "model_not_ready"
    assert "model absent is not in" in answer.json()["error"]


def served_taxonomy(server) -> dict:
    """GET /v1/taxonomy with a reviewer's key; the route refuses a call without one, as the queue does."""
    refused = httpx.get(f"{server.url}/v1/taxonomy", timeout=30)
    assert refused.status_code == 401 and refused.json()["kind"] == "unauthorized"
    answer = httpx.get(f"{server.url}/v1/taxonomy", headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def label_buttons(browser, role: str) -> dict[str, str]:
    """The console's buttons of one role (verdict or violation), in order: class name -> its key ("" for none)."""
    buttons = browser.find_elements(By.CSS_SELECTOR, f"#labels [data-{role}]")
    return {button.get_attribute(f"data-{role}"): " ".join(e.text for e in button.find_elements(By.TAG_NAME, "kbd"))
            for button in buttons}


def check_buttons(browser, taxonomy: dict) -> None:
    """The buttons and the key hint are the route's classes: the verdict task's with a / r on the approving and
    rejecting class, the reason task's with digits in the model's order."""
    verdicts = label_buttons(browser, "verdict")
    assert list(verdicts) == taxonomy["tasks"][taxonomy["verdict_task"]]
    assert (verdicts[taxonomy["approve_class"]], verdicts[taxonomy["reject_class"]]) == ("a", "r")
    violations = label_buttons(browser, "violation")
    assert list(violations) == taxonomy["tasks"][taxonomy["reason_task"]]
    assert list(violations.values()) == [str(digit) for digit in range(1, len(violations) + 1)]
    hint = browser.find_element(By.CSS_SELECTOR, "#item .hint").text
    assert (f"a {taxonomy['approve_class']}, r {taxonomy['reject_class']}, 1–{len(violations)} "
            f"{taxonomy['reason_task']}") in hint


def log_in(browser, server, reviewer: str) -> None:
    """Open the console and enter the reviewer's key and name."""
    browser.get(server.url + "/console")
    wait(browser, lambda d: d.find_element(By.ID, "api-key").is_displayed(), "the key form")
    browser.find_element(By.ID, "api-key").send_keys(ALICE_KEY)
    browser.find_element(By.ID, "reviewer").send_keys(reviewer)
    browser.find_element(By.ID, "save-key").click()


def feedback_of(server, request_id: str) -> dict:
    decision = httpx.get(f"{server.url}/v1/audits/{request_id}", headers={"Authorization": f"Bearer {ALICE_KEY}"},
                         timeout=30)
    assert decision.status_code == 200, decision.text
    return decision.json()["feedback"]


def queue_ids(server, key: str = ALICE_KEY) -> list[str]:
    page = httpx.get(f"{server.url}/v1/reviews/queue", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert page.status_code == 200, page.text
    return [item["request_id"] for item in page.json()["items"]]


def post_ads(server) -> list[dict]:
    answers = []
    for copy, colour in ((REVIEW, "#e4572e"), (PASS, "#4caf50"), (REVIEW + "，首选好物", "#2e86de"),
                         (BLOCK, "#555555"), ("独家配方，最火爆款", "#f3a712")):
        response = httpx.post(f"{server.url}/v1/audits", headers={"Authorization": f"Bearer {ALICE_KEY}"},
                              json={"image_base64": b64(advert(colour, f"AD {len(answers) + 1}")), "text": copy}, timeout=60)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def console_shows(browser, count: int) -> bool:
    return browser.find_element(By.ID, "queue-size").text == f"{count} waiting" and \
        len(browser.find_elements(By.CSS_SELECTOR, "#queue li")) == count


def press(browser, *keys) -> None:
    ActionChains(browser).send_keys(*keys).perform()


def test_reviewer_console_flow_with_the_keyboard(model_dir, tmp_path, browser):  # noqa: F811
    app = create_app(settings(model_dir, tmp_path, api_keys=KEYS, max_text_chars=60))
    with ServerThread(app) as server:
        answers = post_ads(server)
        review = [a for a in answers if a["suggestion"] == "review"]
        assert len(review) == 3 and queue_ids(server) == [a["request_id"] for a in review]
        assert httpx.get(f"{server.url}/v1/reviews/queue", timeout=30).status_code == 401  # keys respected

        taxonomy = served_taxonomy(server)
        assert taxonomy == {**DEFAULT_TAXONOMY.as_config(), "approve_class": "approve", "reject_class": "reject"}
        assert list(taxonomy["tasks"]) == list(DEFAULT_TAXONOMY.tasks)  # in the model's order

        browser.get(server.url + "/console")
        wait(browser, lambda d: d.find_element(By.ID, "api-key").is_displayed(), "the key form")
        browser.find_element(By.ID, "api-key").send_keys("not-the-key", Keys.ENTER)
        wait(browser, lambda d: "refused" in d.find_element(By.ID, "status").text, "the wrong key to be refused")
        log_in(browser, server, "ann")
        wait(browser, lambda d: console_shows(d, 3), "the queue of three")
        check_buttons(browser, taxonomy)
        assert not browser.find_element(By.ID, "login").is_displayed()  # the key form gives way to the queue
        assert browser.execute_script("return sessionStorage.getItem('adaudit.apiKey')") == ALICE_KEY

        first = review[0]
        wait(browser, lambda d: d.execute_script(
            "const p = document.getElementById('picture'); return p.complete && p.naturalWidth"), "the picture")
        assert browser.find_element(By.ID, "picture").get_property("naturalWidth") == 240
        copy = browser.find_element(By.ID, "copy")
        assert copy.text == REVIEW and browser.find_element(By.ID, "suggestion").text == "review"
        marks = {(m.get_attribute("class"), m.text) for m in copy.find_elements(By.TAG_NAME, "mark")}
        hits = {(h["list"], REVIEW[h["start"]:h["end"]]) for h in first["term_hits"]}
        assert {text for cls, text in marks if "review" in cls} == {t for lst, t in hits if lst == "review"} != set()
        assert "verdict" in browser.find_element(By.ID, "scores").text

        press(browser, "2")  # exaggeration: a reject
        chosen = browser.find_element(By.CSS_SELECTOR, "[data-violation='exaggeration']")
        assert chosen.get_attribute("class") == "chosen"
        shot = tmp_path / "console.png"
        browser.save_screenshot(str(shot))
        press(browser, Keys.ENTER)
        wait(browser, lambda d: console_shows(d, 2), "the reviewed ad to leave the queue")
        press(browser, "j", "a", Keys.ENTER)  # the third ad: approve
        wait(browser, lambda d: console_shows(d, 1), "the second review")

        assert feedback_of(server, first["request_id"]) == {"verdict": "reject", "violation": "exaggeration"}
        assert feedback_of(server, review[2]["request_id"]) == {"verdict": "approve", "violation": "none"}
        assert queue_ids(server) == [review[1]["request_id"]]
        with sqlite3.connect(tmp_path / "log.db") as database:
            reviewers = database.execute("SELECT DISTINCT reviewer FROM feedback").fetchall()
        assert reviewers == [("ann",)]
        assert Image.open(shot).size[0] >= 1200
        if os.environ.get("ADAUDIT_CONSOLE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["ADAUDIT_CONSOLE_SCREENSHOT"])


def test_the_console_labels_in_the_served_models_taxonomy(custom_student, tmp_path, browser):  # noqa: F811
    """A student trained on tests/test_taxonomy.py's relabelled ads (decision: ok / refuse, risk: clean / fraud /
    adult / mismatch), served with a policy in its names; every ad is put in the queue (review_sample_rate 1)."""
    _, student = custom_student
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "custom.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    app = create_app(settings(student.parent, tmp_path, api_keys=KEYS, policy_dir=policies, default_policy="custom",
                              review_sample_rate=1.0))
    with ServerThread(app) as server:
        taxonomy = served_taxonomy(server)
        assert taxonomy == {**CUSTOM, "approve_class": "ok", "reject_class": "refuse"}
        assert list(taxonomy["tasks"]) == ["decision", "risk", "category"]
        ads = [b64(advert(colour, f"AD {number}")) for number, colour in enumerate(("#e4572e", "#2e86de"), 1)]
        answers = [httpx.post(f"{server.url}/v1/audits", headers={"Authorization": f"Bearer {ALICE_KEY}"},
                              json={"image_base64": ad, "text": "理财稳赚不赔"}, timeout=60) for ad in ads]
        assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
        assert queue_ids(server) == [answer.json()["request_id"] for answer in answers]

        log_in(browser, server, "bea")
        wait(browser, lambda d: console_shows(d, 2), "the queue of two")
        check_buttons(browser, taxonomy)
        press(browser, "5")  # risk has four classes: no fifth key
        assert not browser.find_elements(By.CSS_SELECTOR, "#labels .chosen")
        press(browser, "2")  # fraud: the decision becomes refuse
        chosen = browser.find_elements(By.CSS_SELECTOR, "#labels .chosen")
        assert [button.text for button in chosen] == ["r refuse", "2 fraud"]
        press(browser, Keys.ENTER)
        wait(browser, lambda d: console_shows(d, 1), "the first review")
        press(browser, "a", Keys.ENTER)  # ok: the clean class
        wait(browser, lambda d: console_shows(d, 0), "the second review")
        first, second = (answer.json()["request_id"] for answer in answers)
        assert feedback_of(server, first) == {"decision": "refuse", "risk": "fraud"}
        assert feedback_of(server, second) == {"decision": "ok", "risk": "clean"}
        assert "Reviewed" in browser.find_element(By.ID, "status").text and queue_ids(server) == []
