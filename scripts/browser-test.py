#!/usr/bin/env python3
"""The web remote in a real browser: headless Chromium (apt chromium, chromium-driver) driven by
selenium. Starts the built daemon and one `device-sim` device, opens the page twice as two
devices of one user, starts playback on the first page, moves it with the second page's
"Play here" button, and checks what each page and the simulated device show (active device,
button states, progress moving, the takeover message). With --screenshot PATH it saves the
second page there (`scripts/browser-test.py --screenshot docs/web-remote.png` for the docs);
scripts/test runs it without, leaving the working tree as it found it.
Exits non-zero on any failure."""
import json
import pathlib
import random
import re
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

root = pathlib.Path(__file__).resolve().parent.parent
# Where to save the second page's picture, when asked (`--screenshot PATH`); nowhere by default.
screenshot = None
if "--screenshot" in sys.argv:
    index = sys.argv.index("--screenshot")
    if index + 1 >= len(sys.argv):
        raise SystemExit("browser-test: --screenshot needs a path")
    screenshot = pathlib.Path(sys.argv[index + 1]).resolve()
sys.path.insert(0, str(root / "scripts" / "lib"))
from daemon import start as start_daemon  # noqa: E402

daemon_path = root / ".build/debug/playback-syncd"
device_sim = root / ".build/debug/device-sim"
failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print(f"browser test: FAILED: {what}", file=sys.stderr)


def browser():
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1250",
                     "--disable-gpu", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(driver, condition, what, timeout=10):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception:
        check(False, what)
        return None


def sign_in(driver, port, user, device_id, name):
    driver.get(f"http://127.0.0.1:{port}/?device={device_id}&name={name.replace(' ', '%20')}")
    wait(driver, lambda d: d.find_element(By.ID, "user-field").is_displayed(), f"{name}: the dev sign-in field shows")
    driver.find_element(By.ID, "user-name").send_keys(user)
    driver.find_element(By.ID, "signin-button").click()
    wait(driver, lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "online", f"{name}: connected")


def device_row(driver, device_id):
    return driver.find_element(By.CSS_SELECTOR, f'#devices li[data-device="{device_id}"]')


def progress_moves(driver, name):
    first = driver.find_element(By.ID, "position").text
    time.sleep(1.3)
    second = driver.find_element(By.ID, "position").text
    check(first != second, f"{name}: progress moves ({first} → {second})")


daemon, port = start_daemon(daemon_path, "--log-level", "warning", "--grace-ms", "3000", "--transfer-confirm-ms", "1500")
user = f"web-{random.randrange(1 << 30):x}"
sim = None
pages = []
try:
    server = f"ws://127.0.0.1:{port}"
    # Its stdin is a pipe kept open: `device-sim connect` stops at the end of its input, and CI
    # runs with /dev/null there.
    # A broken speaker: it takes a transfer but never starts (two-phase transfer, see below).
    sim = subprocess.Popen([str(device_sim), "connect", "--server", server, "--user", user, "--name", "Kitchen",
                            "--kind", "speaker", "--json", "--fail-start"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    a, b = browser(), browser()
    pages = [a, b]
    sign_in(a, port, user, "page-a", "Page A")
    sign_in(b, port, user, "page-b", "Page B")
    errors = [entry["message"] for entry in a.get_log("browser") if entry["level"] == "SEVERE"]
    check(not errors, f"no console error on load: {errors}")
    check(re.fullmatch(r"\d+ %", a.find_element(By.ID, "volume-value").text or "") is not None,
          f"the volume shows its number: {a.find_element(By.ID, 'volume-value').text!r}")

    # A bad token: the page says so and returns to the sign-in form (no reconnecting forever).
    bad = browser()
    pages.append(bad)
    bad.get(f"http://127.0.0.1:{port}/?device=page-bad&name=Bad")
    bad.find_element(By.ID, "token").send_keys("not.a.token")
    bad.find_element(By.ID, "signin-button").click()
    wait(bad, lambda d: d.find_element(By.ID, "signin").is_displayed() and d.find_element(By.ID, "signin-error").is_displayed(),
         "a bad token returns to the sign-in form")
    message = bad.find_element(By.ID, "signin-error").text
    check("Signed out" in message, f"a bad token says why: {message!r}")
    check(bad.find_element(By.ID, "connection").get_attribute("data-state") == "offline", "a bad token does not keep reconnecting")
    listed = lambda d: sorted(e.get_attribute("data-device") for e in d.find_elements(By.CSS_SELECTOR, "#devices li"))
    if not wait(a, lambda d: listed(d) == ["kitchen", "page-a", "page-b"], "Page A lists three devices", timeout=20):
        print(f"browser test: Page A lists {listed(a)}, Page B {listed(b)}; device-sim is "
              f"{'running' if sim.poll() is None else f'gone (exit {sim.returncode})'}", file=sys.stderr)

    # Start playback on page A from a search result.
    a.find_element(By.ID, "search").send_keys("t0042")
    a.find_element(By.CSS_SELECTOR, "#search-form button").click()
    result = wait(a, lambda d: d.find_element(By.CSS_SELECTOR, '#results li[data-track="t0042"]'), "Page A finds t0042")
    if result:
        play = result.find_element(By.XPATH, "./button[starts-with(text(), 'Play')]")
        check(play.text == "Play on this browser", f"'Play' says where it plays: {play.text!r}")
        play.click()
    wait(a, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-active") == "true", "Page A becomes the active device")
    wait(a, lambda d: "active" in device_row(d, "page-a").get_attribute("class"), "Page A marks itself active")
    wait(b, lambda d: "active" in device_row(d, "page-a").get_attribute("class"), "Page B sees Page A active")
    check(a.find_element(By.ID, "play-pause").get_attribute("data-playing") == "true", "Page A's button shows pause while playing")
    check("Playing on Page A" in b.find_element(By.ID, "active-on").text, "Page B says it plays on Page A")
    progress_moves(a, "Page A")
    progress_moves(b, "Page B (watching)")
    check(not device_row(a, "page-a").find_element(By.TAG_NAME, "button").is_enabled(), "Page A's own 'Play here' is disabled while active")

    # Move it with page B's "Play here".
    here = device_row(b, "page-b").find_element(By.TAG_NAME, "button")
    check(here.text == "Play here" and here.is_enabled(), "Page B offers 'Play here'")
    here.click()
    wait(b, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-active") == "true", "Page B becomes the active device")
    wait(a, lambda d: d.find_element(By.ID, "takeover").is_displayed(), "Page A shows the takeover message")
    takeover = a.find_element(By.ID, "takeover").text
    check("another device" in takeover and "Page B" in takeover, f"the takeover message names Page B: {takeover!r}")
    check(a.find_element(By.TAG_NAME, "body").get_attribute("data-active") == "false", "Page A is no longer active")
    wait(a, lambda d: "active" in device_row(d, "page-b").get_attribute("class"), "Page A marks Page B active")
    check("Playing on Page B" in a.find_element(By.ID, "active-on").text, "Page A says it plays on Page B")
    check(device_row(a, "page-a").find_element(By.TAG_NAME, "button").is_enabled(), "Page A can take it back")
    progress_moves(b, "Page B")

    # The simulated device agrees.
    state = subprocess.run([str(device_sim), "state", "--json", "--server", server, "--user", user],
                           capture_output=True, text=True, timeout=20)
    current = json.loads(state.stdout) if state.returncode == 0 else {}
    check(current.get("active_device") == "page-b" and current.get("track", {}).get("id") == "t0042",
          f"device-sim sees t0042 playing on page-b: {state.stdout.strip()[:200]}")
    wait(b, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) >= 1, "Page B lists the transferred play in Recently played")

    # The queue: add two tracks from a search, move the second up, remove one.
    b.find_element(By.ID, "search").send_keys("harbour")
    b.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait(b, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) >= 3, "Page B finds tracks for 'harbour'")
    added = []
    for result in b.find_elements(By.CSS_SELECTOR, "#results li")[:3]:
        added.append(result.get_attribute("data-track"))
        result.find_element(By.XPATH, "./button[text()='Add']").click()
        time.sleep(0.2)
    queued = lambda d: [e.get_attribute("data-entry") for e in d.find_elements(By.CSS_SELECTOR, "#queue li")]
    wait(a, lambda d: len(queued(d)) >= 3, "Page A shows the three queued tracks")
    entries = queued(a)
    a.find_element(By.CSS_SELECTOR, f'#queue li[data-entry="{entries[1]}"]').find_element(By.XPATH, "./button[text()='Up']").click()
    wait(b, lambda d: queued(d)[:2] == [entries[1], entries[0]], "moving an entry up on Page A reorders Page B's queue")
    b.find_element(By.CSS_SELECTOR, f'#queue li[data-entry="{entries[2]}"]').find_element(By.XPATH, "./button[text()='Remove']").click()
    wait(a, lambda d: entries[2] not in queued(d), "removing an entry on Page B removes it on Page A")
    b.find_element(By.ID, "search").clear()
    time.sleep(0.5)
    if screenshot:
        b.save_screenshot(str(screenshot))

    # A transfer to the broken Kitchen speaker: it never confirms its start, so playback comes back.
    device_row(b, "kitchen").find_element(By.XPATH, "./button[text()='Transfer']").click()
    wait(b, lambda d: "Couldn't start on Kitchen" in d.find_element(By.ID, "takeover").text, "Page B says the Kitchen did not start")
    notice = b.find_element(By.ID, "takeover").text
    check(notice == "Couldn't start on Kitchen — back on Page B", f"the notice says where playback is: {notice!r}")
    wait(b, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-active") == "true", "Page B is active again")
    check(b.find_element(By.ID, "play-pause").get_attribute("data-playing") == "true", "Page B plays again")
    wait(a, lambda d: "Couldn't start on Kitchen — back on Page B" in d.find_element(By.ID, "takeover").text,
         "Page A sees the failed transfer too")
finally:
    for page in pages:
        page.quit()
    if sim:
        sim.terminate()
        sim.wait(timeout=10)
    daemon.terminate()
    daemon.wait(timeout=10)

print(f"browser test: {'ok' if not failures else f'{len(failures)} failures'}")
sys.exit(1 if failures else 0)
