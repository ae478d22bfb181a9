#!/usr/bin/env python3
"""Drives freeway's dashboard in a real headless Chromium (Debian's
`chromium` and `chromium-driver`, through Selenium) against a gateway that
tests/it/dashboard.rs started, checking what the page renders.

    dashboard.py BASE_URL ADMIN_TOKEN SCREENSHOT_DIR SCENARIO

SCENARIO is `main` (login, overview, log with a trail, favorites, a
cooldown reset, policies, playground, phone width, logout), `open` (a
gateway without admin tokens on loopback: no login) or `add-key`.
Prints `<scenario> ok` at the end; any failed check raises (exit 1) after
saving a screenshot of the page as it was.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE, TOKEN, SHOTS, SCENARIO = sys.argv[1:5]
WAIT = 10
DESKTOP = (1280, 900)
PHONE = (390, 844)
# An HTML5 drag of arguments[0] onto arguments[1].
DRAG = """
const [from, to] = arguments;
const data = new DataTransfer();
const fire = (el, type) => el.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
fire(from, 'dragstart');
fire(to, 'dragenter');
fire(to, 'dragover');
fire(to, 'drop');
fire(from, 'dragend');
"""
PAGES = ["overview", "providers", "routes", "log", "policies", "playground"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("FREEWAY_CHROMIUM", "/usr/bin/chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("FREEWAY_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


class Check:
    def __init__(self, driver):
        self.d = driver
        self.width = "desktop"

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        self.d.save_screenshot(os.path.join(SHOTS, f"{name}-{self.width}.png"))

    def find(self, css, text=None, timeout=WAIT):
        """The first visible element matching `css` (containing `text`)."""
        def found(d):
            for el in d.find_elements(By.CSS_SELECTOR, css):
                if el.is_displayed() and (text is None or text in el.text):
                    return el
            return False
        try:
            return WebDriverWait(self.d, timeout).until(found)
        except TimeoutException:
            texts = [el.text for el in self.d.find_elements(By.CSS_SELECTOR, css)]
            raise AssertionError(f"no visible `{css}`" + (f" with {text!r}" if text else "")
                                 + f" in {self.d.current_url}; found {texts!r}") from None

    def absent(self, css):
        shown = [el.text for el in self.d.find_elements(By.CSS_SELECTOR, css) if el.is_displayed()]
        assert not shown, f"`{css}` is shown: {shown!r}"

    def page(self, name):
        self.d.get(f"{BASE}/admin/#/{name}")
        return self.find(f"#page-{name} h1")

    def no_page_errors(self, scope="main"):
        """No error box on the page (the API's errors are shown as one)."""
        self.absent(f"{scope} .error[role=alert]")

    def console(self):
        """JavaScript errors logged since the last call fail the test.
        Failed resource loads (`network`) are the API's refusals, which the
        page shows on screen and the checks read there."""
        errors = [e for e in self.d.get_log("browser")
                  if e["level"] == "SEVERE" and e.get("source") != "network"]
        assert not errors, f"console errors: {errors!r}"

    def no_sideways_scroll(self, name):
        # The layout viewport's width (clientWidth), not innerWidth: a
        # mobile browser widens its visual viewport to fit wide content.
        wide = self.d.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        limit = PHONE[0] if self.width == "phone" else wide[1]
        assert wide[0] <= min(wide[1], limit), f"{name} scrolls sideways at {self.width}: {wide}"

    def login(self):
        self.d.get(f"{BASE}/admin/")
        field = self.find("#token")
        field.clear()
        field.send_keys(TOKEN)
        self.find("#login-button").click()
        self.find("#page-overview h1")


def main_scenario(c):
    d = c.d
    # A wrong token is refused, with a message, and the pages stay hidden.
    d.get(f"{BASE}/admin/")
    c.find("#login-form")
    c.shot("login")
    c.find("#token").send_keys("not-the-admin-token")
    c.find("#login-button").click()
    c.find("#login-message", "refused")
    assert not c.find("#login-form").get_attribute("hidden")
    assert not d.find_element(By.ID, "main").is_displayed()
    assert d.execute_script("return sessionStorage.length") == 0, "a refused token is not kept"
    c.console()

    # The right one opens the overview: capacity per provider, the chart
    # and the errors.
    c.find("#token").send_keys(TOKEN)
    c.find("#login-button").click()
    c.find("#page-overview h1")
    c.find("#capacity article[data-provider=a] .model", "x")
    c.find("#capacity article[data-provider=a]", "cooling")
    chart = c.find("#traffic svg.chart")
    label = chart.get_attribute("aria-label")
    assert "requests" in label and not label.startswith("0 requests"), label
    c.find("#errors td", "429")
    c.no_page_errors()
    c.shot("overview")
    c.console()

    # The log: the fallback request with its attempt trail.
    c.page("log")
    row = c.find("#log-table tr.request", "r")
    trail = row.find_element(By.XPATH, "following-sibling::tr[1]")
    assert not trail.is_displayed()
    row.find_element(By.CSS_SELECTOR, "button.expand").click()
    c.find("#log-table tr.trail li", "a/m")
    text = trail.text
    assert "HTTP 503" in text and "b/n" in text and "ok" in text, text
    c.no_page_errors()
    c.shot("log")
    # A filter that matches nothing says so.
    c.find("#filter-model").send_keys("no-such-model")
    c.find("#log-filters button[type=submit]").click()
    c.find("#log-empty")
    # A bad filter shows the API's message.
    c.find("#filter-status").send_keys("teapot")
    c.find("#log-filters button[type=submit]").click()
    c.find("#log-results .error", "status")
    c.console()

    # Favorites: add or/small-8b from the free pool, move it up, save, and
    # the free pool's new order is shown.
    c.page("routes")
    c.find("#favorites-list li", "big-70b")
    c.find("article[data-route=free] td.target", "or/big-70b")
    before = [el.text for el in d.find_elements(By.CSS_SELECTOR, "article[data-route=free] td.target")]
    assert before == ["or/big-70b", "or/small-8b"], before
    star = [b for b in d.find_elements(By.CSS_SELECTOR, "article[data-route=free] button.star")
            if b.get_attribute("aria-label") == "Add or/small-8b to favorites"]
    assert star, "no star for or/small-8b"
    star[0].click()
    favorites = lambda: [el.get_attribute("data-name") for el in d.find_elements(By.CSS_SELECTOR, "#favorites-list li")]
    assert favorites() == ["big-70b", "or/small-8b"], favorites()
    # Dragged onto the first (the events a browser fires for a mouse drag;
    # WebDriver's own drag does not fire HTML5 drag events).
    d.execute_script(DRAG, c.find("#favorites-list li[data-name='or/small-8b']"),
                     c.find("#favorites-list li[data-name='big-70b']"))
    assert favorites() == ["or/small-8b", "big-70b"], favorites()
    # And with the buttons, as on a phone: down, then up again.
    c.find("#favorites-list li[data-name='or/small-8b'] button.down").click()
    assert favorites() == ["big-70b", "or/small-8b"], favorites()
    c.find("#favorites-list li[data-name='or/small-8b'] button.up").click()
    assert favorites() == ["or/small-8b", "big-70b"], favorites()
    c.find("#save-favorites").click()
    c.find("#routes-message .ok", "saved")
    order = [el.text for el in d.find_elements(By.CSS_SELECTOR, "#free-order li")]
    assert order == ["or/small-8b", "or/big-70b"], order
    after = [el.text for el in d.find_elements(By.CSS_SELECTOR, "article[data-route=free] td.target")]
    assert after == ["or/small-8b", "or/big-70b"], after
    c.no_page_errors()
    c.shot("routes")
    c.console()

    # A cooldown reset: a/x cools after its 429, the button ends it.
    c.page("providers")
    row = c.find("#cooldowns article[data-provider=a] tr[data-model=x]")
    assert "cooling" in row.text, row.text
    row.find_element(By.CSS_SELECTOR, "button.reset-model").click()
    c.find("#providers-message .ok", "1 cooldown cleared")
    row = c.find("#cooldowns article[data-provider=a] tr[data-model=x]")
    assert "ready" in row.text and "cooling" not in row.text, row.text
    c.no_page_errors("#cooldowns")
    c.shot("providers")
    c.console()

    # Policies: the scripts in force and the last reload.
    c.page("policies")
    c.find("#policy-list li", "favorites")
    c.find("#page-policies", "Last (re)load")
    c.find("#policy-settings", "small-8b")
    c.no_page_errors()
    c.shot("policies")
    c.console()

    # The playground: a chat to route r falls back from a/m to b/n.
    c.page("playground")
    model = c.find("#pg-model")
    model.clear()
    model.send_keys("r")
    c.find("#pg-send").click()
    c.find("#pg-via", "b/n")
    attempts = d.find_elements(By.CSS_SELECTOR, "#pg-attempts li")
    assert len(attempts) == 2 and "a/m" in attempts[0].text and "b/n" in attempts[1].text, \
        [a.text for a in attempts]
    c.find("#pg-answer", "hello from mock")
    c.find("#page-playground dl.headers dt", "x-routed-via")
    c.find("#page-playground dl.headers dd", "b/n")
    c.no_page_errors()
    c.shot("playground")
    c.console()

    # A phone: the menu folds, and no page scrolls sideways.
    c.width = "phone"
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True})
    for name in PAGES:
        c.page(name)
        # Each page with its widest content shown.
        if name == "log":
            c.find("#log-table button.expand").click()
            c.find("#log-table tr.trail li")
        if name == "providers":
            c.find("#cooldowns article")
        if name == "playground":
            c.find("#pg-model").clear()
            c.find("#pg-model").send_keys("r")
            c.find("#pg-send").click()
            c.find("#page-playground dl.headers dd", "b/n")
        time.sleep(0.2)
        c.no_sideways_scroll(name)
        c.shot(name)
    assert not d.find_element(By.ID, "nav").is_displayed(), "the nav is folded on a phone"
    c.find("#menu").click()
    c.find("#nav a[data-page=log]").click()
    c.find("#page-log h1")
    assert not d.find_element(By.ID, "nav").is_displayed(), "the nav folds again after a choice"
    c.console()
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    c.width = "desktop"

    # A token that stops working (rotated admin_keys) brings the login
    # back with the reason.
    c.page("overview")
    d.execute_script("sessionStorage.setItem('freeway.admin.token', 'rotated-away')")
    c.find("#nav a[data-page=routes]").click()
    c.find("#login-message", "refused")
    assert not d.find_element(By.ID, "main").is_displayed()
    assert d.execute_script("return sessionStorage.length") == 0
    c.find("#token").send_keys(TOKEN)
    c.find("#login-button").click()
    c.find("#page-routes h1")  # back where the operator was

    # Logging out forgets the token.
    c.find("#logout").click()
    c.find("#login-message", "Logged out")
    assert d.execute_script("return sessionStorage.length") == 0
    d.get(f"{BASE}/admin/#/log")
    c.find("#login-form")
    assert not d.find_element(By.ID, "main").is_displayed()
    c.console()


def open_scenario(c):
    """A gateway open on loopback without admin_keys: no login, no logout."""
    d = c.d
    d.get(f"{BASE}/admin/")
    c.find("#page-overview h1")
    assert not d.find_element(By.ID, "login").is_displayed()
    assert not d.find_element(By.ID, "logout").is_displayed(), "nothing to log out of"
    c.page("log")
    c.find("#log-table tr.request")
    # Its policies: the refused reload's error, with file and line.
    c.page("policies")
    c.find("#policy-errors li", "20-bad.rhai:2")
    c.find("#page-policies .badge", "last reload refused")
    c.find("#policy-list li", "10-ok")
    c.shot("policies-errors")
    c.console()


def add_key_scenario(c):
    d = c.d
    c.login()
    c.page("providers")
    c.find("#add-key-form")
    for option in d.find_elements(By.CSS_SELECTOR, "#add-provider option"):
        if option.get_attribute("value") == "a":
            option.click()
    c.find("#add-key").send_keys("ka-added-through-the-dashboard")
    c.find("#add-key-button").click()
    c.find("#providers-message .ok", "added to a")
    row = c.find("#keys-table tr", "api")
    assert "a" in row.text, row.text
    assert "ka-added-through-the-dashboard" not in d.page_source, "the key itself is never shown"
    c.shot("keys")
    c.console()


def run():
    driver = browser()
    c = Check(driver)
    try:
        {"main": main_scenario, "open": open_scenario, "add-key": add_key_scenario}[SCENARIO](c)
    except BaseException:
        try:
            c.shot(f"failed-{SCENARIO}")
        finally:
            driver.quit()
        raise
    driver.quit()
    print(f"{SCENARIO} ok")


if __name__ == "__main__":
    run()
