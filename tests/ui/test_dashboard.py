"""The dashboard in a real browser against a real stack (API + two workers): sign-in, live
progress, pause and resume, bulk retry with its confirmation, enqueue from the Kinds form,
viewer and submitter limits, CSRF refusal, escaping. Run by scripts/test.sh."""

import re
import time

from conftest import SHOTS, until


def test_operator_sees_progress_move_live(sign_in, stack):
    s = sign_in("ops")
    s.shot("overview")
    job = stack.submit("ops", {"kind": "sleep", "args": {"ms": 5000, "steps": 20}})
    page = s.page
    page.goto(f"/ui/jobs/{job}")
    # A marker that a reload would wipe: the page must update in place. (Predicates are
    # functions: the page's CSP forbids evaluating strings.)
    page.evaluate("window.__stay = 1")
    page.wait_for_function("() => document.getElementById('progress').value > 0", timeout=30000)
    first = page.evaluate("document.getElementById('progress').value")
    page.wait_for_function(
        f"() => document.getElementById('progress').value > {first}", timeout=30000
    )
    s.shot("job-running")
    page.wait_for_function(
        "() => document.getElementById('job-state').textContent.trim() === 'succeeded'", timeout=30000
    )
    # The state event also swaps in the server's rendering of the finished job (no more
    # Cancel button).
    page.wait_for_selector("#cancel", state="detached", timeout=30000)
    assert page.evaluate("window.__stay") == 1, "the page reloaded"
    assert page.url.endswith(f"/ui/jobs/{job}")
    assert stack.job("ops", job)["state"] == "succeeded"
    s.shot("job")


def test_pause_and_resume_a_queue_with_its_buttons(sign_in, stack):
    s = sign_in("ops")
    page = s.page
    page.goto("/ui/queues")
    page.click("button[aria-label='Pause uip']")
    page.wait_for_url("**/ui/queues")
    until("the API reports uip paused", lambda: (stack.queue("uip") or {}).get("paused") is True)
    job = stack.submit("ops", {"kind": "noop", "queue": "uip"})
    # Give the two workers time to claim it if they could (a paused queue must not be claimed).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert stack.job("ops", job)["state"] == "queued"
        time.sleep(0.2)
    page.reload()
    assert page.locator("tr[data-queue='uip'] .badge.paused").count() == 1
    s.shot("queues-paused")
    page.click("button[aria-label='Resume uip']")
    until("uip resumed", lambda: (stack.queue("uip") or {}).get("paused") is False)
    until("the queued job ran", lambda: stack.job("ops", job)["state"] == "succeeded")


def test_bulk_retry_of_failed_jobs_by_kind(sign_in, stack):
    jobs = [
        stack.submit("ops", {"kind": "fail", "args": {"times": 1, "mode": "permanent"}, "max_attempts": 1})
        for _ in range(3)
    ]
    for j in jobs:
        until(f"{j} failed", lambda j=j: stack.job("ops", j)["state"] == "failed")
    s = sign_in("ops")
    page = s.page
    page.goto("/ui/jobs?state=failed&kind=fail")
    for j in jobs:
        assert page.locator(f"tr[data-job='{j}']").count() == 1
    page.click("#bulk-retry")
    count = page.inner_text("#bulk-count")
    assert re.search(r"\b3\b", count), count
    s.shot("bulk-confirm")
    page.click("#bulk-confirm")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f-]{36}$"))
    for j in jobs:
        until(f"{j} ran again", lambda j=j: stack.job("ops", j)["state"] == "succeeded")
        assert stack.job("ops", j)["attempt"] == 2


def test_enqueue_noop_from_the_kinds_form(sign_in, stack):
    s = sign_in("ops")
    page = s.page
    page.goto("/ui/kinds")
    page.click("#enqueue-noop")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f-]{36}$"))
    job = page.url.rsplit("/", 1)[1]
    until("noop succeeded", lambda: stack.job("ops", job)["state"] == "succeeded")
    page.wait_for_function(
        "() => document.getElementById('job-state').textContent.trim() === 'succeeded'", timeout=30000
    )


def test_viewer_sees_no_action_buttons_and_a_crafted_post_is_refused(sign_in, stack):
    job = stack.submit("ops", {"kind": "sleep", "args": {"ms": 60000}, "queue": "default"})
    s = sign_in("eyes")
    page = s.page
    for path in ["/ui/queues", "/ui/workers", f"/ui/jobs/{job}", "/ui/jobs", "/ui/kinds", "/ui/webhooks"]:
        page.goto(path)
        for sel in [
            "form[action$='/pause']",
            "form[action$='/resume']",
            "form[action$='/quiet']",
            "form[action$='/stop']",
            "form[action$='/cancel']",
            "form[action$='/retry']",
            "form[action*='/ui/jobs/actions/']",
            "form.enqueue",
        ]:
            assert page.locator(sel).count() == 0, f"{path} shows {sel} to a viewer"
    r = page.request.post("/ui/queues/uip/pause", form={"csrf_token": s.csrf()})
    assert r.status == 403
    assert "forbidden" in r.text()
    r = page.request.post(f"/ui/jobs/{job}/cancel", form={"csrf_token": s.csrf()})
    assert r.status == 403
    assert (stack.queue("uip") or {}).get("paused") is not True
    assert stack.job("ops", job)["state"] in ("queued", "running")
    stack.api("POST", f"/v1/jobs/{job}/cancel", "ops")


def test_submitter_sees_its_own_jobs_only(sign_in, stack):
    mine = stack.submit("alice", {"kind": "noop"})
    theirs = stack.submit("bob", {"kind": "noop"})
    s = sign_in("alice")
    page = s.page
    page.goto("/ui/jobs")
    assert page.locator(f"tr[data-job='{mine}']").count() == 1
    assert page.locator(f"tr[data-job='{theirs}']").count() == 0
    assert theirs not in page.content()
    r = page.goto(f"/ui/jobs/{theirs}")
    assert r.status == 404
    r = page.goto(f"/ui/jobs/{mine}")
    assert r.status == 200


def test_post_without_csrf_is_refused(sign_in, stack):
    s = sign_in("ops")
    page = s.page
    page.goto("/ui/queues")
    r = page.request.post("/ui/queues/uip/pause", form={})
    assert r.status == 403
    assert "csrf_failed" in r.text()
    r = page.request.post("/ui/queues/uip/pause", form={"csrf_token": "forged"})
    assert r.status == 403
    assert (stack.queue("uip") or {}).get("paused") is not True


def test_script_in_args_renders_as_text(sign_in, stack):
    evil = "<script>window.__xss=1;alert('xss')</script><img src=x onerror=\"alert(2)\">"
    job = stack.submit("ops", {"kind": "fail", "args": {"times": 0, "message": evil}})
    until("the job ran", lambda: stack.job("ops", job)["state"] == "succeeded")
    s = sign_in("ops")
    page = s.page
    page.goto(f"/ui/jobs/{job}")
    assert "<script>window.__xss=1" in page.inner_text("#args")
    page.goto(f"/ui/jobs?kind=fail")
    page.goto(f"/ui/jobs/{job}")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    assert s.dialogs == [], s.dialogs
    assert s.console_errors == [], s.console_errors
    assert (SHOTS).exists()


def test_readable_on_a_phone_and_without_javascript(sign_in, stack):
    job = stack.submit("ops", {"kind": "noop", "args": {"note": "phone"}})
    until("noop ran", lambda: stack.job("ops", job)["state"] == "succeeded")
    phone = sign_in("ops", viewport={"width": 390, "height": 800}, is_mobile=True)
    for path in ["/ui/", "/ui/queues", "/ui/workers", "/ui/jobs", f"/ui/jobs/{job}", "/ui/kinds"]:
        phone.page.goto(path)
        wide = phone.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert wide <= 1, f"{path} is {wide}px wider than a phone"
    phone.shot("phone-kinds")
    plain = sign_in("ops", java_script_enabled=False)
    plain.page.goto(f"/ui/jobs/{job}")
    assert plain.page.inner_text("#job-state").strip() == "succeeded"
    plain.page.goto("/ui/")
    assert plain.page.locator("svg.chart").count() == 1
    plain.page.goto("/ui/jobs")
    assert plain.page.locator(f"tr[data-job='{job}']").count() == 1

def test_schedules_page_shows_a_schedule_made_through_the_api(sign_in, stack):
    status, body = stack.api(
        "POST", "/v1/schedules", "alice",
        {"name": "e2e-nightly", "cron": "0 3 * * *", "job": {"kind": "noop"}},
    )
    assert status == 201, (status, body)
    s = sign_in("ops")
    page = s.page
    page.goto("/ui/schedules")
    page.click("a[href='/ui/schedules/e2e-nightly?tenant=alice']")
    page.wait_for_url("**/ui/schedules/e2e-nightly?tenant=alice")
    assert page.locator("#next-runs li").count() == 5
    page.click("#pause")
    page.wait_for_selector("#resume")
    _, shown = stack.api("GET", "/v1/schedules/e2e-nightly?tenant=alice", "ops")
    assert shown["paused"] is True, shown
    s.shot("schedule")


def test_overview_after_the_others(sign_in, stack):
    """Last: the overview with the history the tests above made (the README's screenshot)."""
    s = sign_in("ops")
    page = s.page
    page.goto("/ui/")
    assert page.locator("svg.chart rect.ok").count() > 0
    s.shot("overview")
