"""The operators' web page in a real headless Chromium (Debian's chromium, driven by Selenium):
log in as admin, find a failed saga, retry it with repair, see it complete."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from sagas.services import inject_fault
from tests.servers import free_port
from tests.test_promote_saga import settle

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs"
pytestmark = pytest.mark.slow


def ensure_chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver; installed here when missing (the test's own need)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
            check=True,
            capture_output=True,
        )
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture
def live_server(app):
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@pytest.fixture
def failed_saga(app, client, engine, make_account, project_all):
    admin, author = make_account("ops_admin", password="operator pass"), make_account("author")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "ops_admin"])
    reader = make_account("reader")
    for account in (author, reader):
        client.get("/api/v1/timelines/home", headers=account.auth)
    post_id = client.post("/api/v1/posts", json={"body": "ad"}, headers=author.auth).get_json()[
        "id"
    ]
    client.post(
        f"/api/v1/admin/wallets/{author.id}/credit", json={"credits": 5}, headers=admin.auth
    )
    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_promotion_finished", "permanent", 1)
    saga_id = client.post(
        f"/api/v1/posts/{post_id}/promote", json={"credits": 1}, headers=author.auth
    ).get_json()["saga_id"]
    settle(app)
    return saga_id


def test_an_operator_logs_in_finds_a_failed_saga_and_retries_it(
    app, browser, live_server, failed_saga
):
    from selenium.webdriver.common.by import By

    browser.get(f"{live_server}/admin/")
    assert "/admin/login" in browser.current_url
    browser.find_element(By.ID, "handle").send_keys("ops_admin")
    browser.find_element(By.ID, "password").send_keys("operator pass")
    browser.find_element(By.ID, "login").click()

    browser.find_element(By.ID, "filter-failed").click()
    links = browser.find_elements(By.CSS_SELECTOR, "a.saga-link")
    assert [link.text for link in links] == [failed_saga]
    links[0].click()
    assert browser.find_element(By.ID, "saga-status").text == "failed"
    assert "point of no return" in browser.find_element(By.ID, "last-error").text
    assert "injected permanent fault" in browser.find_element(By.ID, "timeline").text

    browser.find_element(By.ID, "preview-repair").click()
    assert "keys checked" in browser.page_source
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "admin-saga-failed.png"))
    browser.find_element(By.ID, "retry").click()
    alert = browser.switch_to.alert
    assert "Retry this saga" in alert.text
    alert.accept()
    assert "Retry sent" in browser.find_element(By.CSS_SELECTOR, ".flash").text

    settle(app)  # the relay and workers' part, run here
    browser.refresh()
    assert browser.find_element(By.ID, "saga-status").text == "completed"
    actions = browser.find_element(By.ID, "operator-actions").text
    assert "repair" in actions and "retry" in actions
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "admin-saga-retried.png"))


def test_a_non_admin_cannot_log_in_to_the_page(client, make_account):
    make_account("plain", password="plain password")
    page = client.get("/admin/login")
    token = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post(
        "/admin/login", data={"handle": "plain", "password": "plain password", "csrf_token": token}
    )
    assert r.status_code == 401
    assert client.get("/admin/").status_code == 302


def test_forms_without_a_csrf_token_are_refused(client, failed_saga, make_account):
    page = client.get("/admin/login")
    token = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    logged_in = client.post(
        "/admin/login",
        data={"handle": "ops_admin", "password": "operator pass", "csrf_token": token},
    )
    assert logged_in.status_code == 302
    forged = client.post(f"/admin/sagas/{failed_saga}/retry", data={})
    assert forged.status_code == 400
    shown = client.get(f"/admin/sagas/{failed_saga}")
    assert 'id="saga-status">failed' in shown.get_data(as_text=True)
