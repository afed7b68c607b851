"""Airflow's React UI driven in headless Chromium: the pages and controls the browser tests use,
found by ``data-testid``, input names and visible labels (Airflow 3.3's UI), and waits on what
the page shows, never sleeps.

``airflow_ui()`` opens the browser; when a step fails it saves a screenshot and the page source
and names them in the error, so a failed CI run shows what the browser saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import chromium

log = logging.getLogger(__name__)

# A page, or a change the page makes after a click, on a slow 2-core CI machine that also runs
# Cassandra, Kafka and Airflow's three servers.
PAGE_TIMEOUT = 60.0
# The terminal states of a run as the UI's state badge spells them.
FINISHED = ("Success", "Failed")

T = TypeVar("T")


class AirflowUI:
    """One browser session on the Airflow UI at ``url``."""

    def __init__(self, driver: Chrome, url: str) -> None:
        self.driver = driver
        self.url = url.rstrip("/")

    def wait(self, condition: Callable[[Chrome], T], what: str, timeout: float = PAGE_TIMEOUT) -> T:
        """What ``condition`` returns once it is truthy; ``what`` names it in the timeout. An
        element that React re-renders between finding and reading it is looked up again."""
        return WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.25,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition, f"{what} (waited {timeout:.0f}s on {self.driver.current_url})")

    def visible(self, css: str, what: str, timeout: float = PAGE_TIMEOUT) -> WebElement:
        return self.wait(ec.visibility_of_element_located((By.CSS_SELECTOR, css)), what, timeout)

    def log_in(self, username: str, password: str) -> None:
        """Sign in through the auth manager's login form, as a user does."""
        self.driver.get(f"{self.url}/")  # redirects to /auth/login?next=/
        username_field = self.visible("input[name=username]", "the login form")
        # The UI speaks the browser's language unless one was chosen in its menu (kept in local
        # storage): choose English, as the labels and messages the tests read are English.
        self.driver.execute_script("window.localStorage.setItem('i18nextLng', 'en')")
        username_field.send_keys(username)
        self.driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.visible("[data-testid=nav-sidebar]", "the UI's navigation after signing in")

    def open_dag(self, dag_id: str) -> None:
        self.driver.get(f"{self.url}/dags/{dag_id}")
        self.wait(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, "[data-testid=header-card]"), dag_id
            ),
            f"the page of DAG {dag_id}",
        )

    def open_trigger_form(self) -> None:
        self.wait(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")),
            "the Trigger button of the DAG page",
        ).click()
        self.visible("[data-testid=trigger-dag-submit]", "the trigger form")

    def param(self, name: str) -> WebElement:
        """The input of param ``name`` in the trigger form (loaded after the form opens)."""
        return self.visible(f"input[name=element_{name}]", f"the field of param {name}")

    def param_value(self, name: str) -> str:
        """What param ``name``'s field shows now."""
        field = self.driver.find_element(By.CSS_SELECTOR, f"input[name=element_{name}]")
        return field.get_attribute("value") or ""

    def type_param(self, name: str, value: str) -> WebElement:
        """Replace what param ``name``'s field holds with ``value`` and leave the field."""
        field = self.param(name)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        if value:
            field.send_keys(value)
        field.send_keys(Keys.TAB)  # the form judges a field when it loses the focus
        return field

    def param_error(self, name: str) -> str:
        """The validation message shown under param ``name``'s field."""
        css = f"input[name=element_{name}]"
        # The message is in the row (a Chakra Field.Root) that holds the input.
        field_row = "./ancestor::*[@data-scope='field'][@data-part='root'][1]"
        xpath = f"{field_row}//*[@data-part='error-text']"
        return self.wait(
            lambda d: _text(d.find_element(By.CSS_SELECTOR, css).find_elements(By.XPATH, xpath)),
            f"a validation message under param {name}",
        )

    def set_switch(self, name: str, on: bool) -> None:
        """Turn the switch of boolean param ``name`` on or off."""
        self._set_toggle(f"label[id='switch:element_{name}']", on, f"the switch of param {name}")

    def set_checkbox(self, label: str, on: bool) -> None:
        """Tick or clear the form's checkbox whose label contains ``label``."""
        xpath = f"//label[@data-scope='checkbox'][contains(normalize-space(.), '{label}')]"
        self._set_toggle(xpath, on, f"the checkbox '{label}'", by=By.XPATH)

    def _set_toggle(self, locator: str, on: bool, what: str, by: str = By.CSS_SELECTOR) -> None:
        want = "checked" if on else "unchecked"
        toggle = self.wait(ec.visibility_of_element_located((by, locator)), what)
        if toggle.get_attribute("data-state") != want:
            toggle.click()
        self.wait(lambda _: toggle.get_attribute("data-state") == want, f"{what} {want}")

    def trigger_button(self) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")

    def submit(self) -> None:
        self.wait(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")),
            "an enabled Trigger button",
        ).click()

    def wait_for_run_page(self, dag_id: str) -> str:
        """The id of the run the UI went to after a trigger (the run's own page)."""
        prefix = f"/dags/{dag_id}/runs/"
        self.wait(lambda d: prefix in urlsplit(d.current_url).path, f"the page of a {dag_id} run")
        return unquote(urlsplit(self.driver.current_url).path.split(prefix, 1)[1].split("/")[0])

    def wait_for_run_state(self, timeout: float) -> list[str]:
        """The states the run page's header showed, in order, until a terminal one; the page
        refreshes itself while the run is in progress (no reload here)."""
        seen: list[str] = []

        def finished(driver: Chrome) -> bool:
            badges = driver.find_elements(
                By.CSS_SELECTOR, "[data-testid=header-card] [data-testid=state-badge]"
            )
            state = _text(badges)
            if state and (not seen or seen[-1] != state):
                seen.append(state)
                log.info("run state in the UI: %s", state)
            return state in FINISHED

        try:
            self.wait(finished, "a finished run in the page's header", timeout)
        except TimeoutException as exc:
            raise TimeoutException(f"{exc.msg}; states seen: {seen}") from exc
        return seen

    def form_error(self) -> str:
        """The error the trigger form shows above its fields (e.g. Airflow refusing params)."""
        return self.wait(
            lambda d: _text(d.find_elements(By.CSS_SELECTOR, "[data-testid=error-alert]")),
            "an error shown in the trigger form",
        )

    def save_evidence(self, directory: Path, name: str = "browser") -> str:
        """A screenshot and the page source in ``directory``; says where, or why not."""
        directory.mkdir(parents=True, exist_ok=True)
        png, html = directory / f"{name}.png", directory / f"{name}.html"
        try:
            self.driver.save_screenshot(str(png))
            html.write_text(self.driver.page_source)
        except WebDriverException as exc:
            return f"no screenshot, the browser is gone: {exc.msg}"
        return f"screenshot {png}, page source {html}, at {self.driver.current_url}"


def _text(elements: list[WebElement]) -> str:
    """The visible text of the first displayed element, or ''."""
    return next((e.text.strip() for e in elements if e.is_displayed() and e.text.strip()), "")


@contextmanager
def airflow_ui(url: str, evidence: Path) -> Iterator[AirflowUI]:
    """A headless Chromium on the Airflow UI at ``url``; any failure inside the block leaves a
    screenshot and the page source in ``evidence`` and names them in the error."""
    with chromium() as driver:
        ui = AirflowUI(driver, url)
        try:
            yield ui
        except Exception as exc:
            where = ui.save_evidence(evidence)
            raise AssertionError(f"{exc}\nwhat the browser saw: {where}") from exc
