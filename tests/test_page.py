"""The correspondence page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which `.ci/run` installs) driven by Selenium, against the local server on a
tiny exported model. Upload two images through the file inputs, click a point, and check the
page's match against `POST /match`; the arrow keys, the top-N lines, phone width, no console
errors. Screenshots go to `test-artifacts/` (the docs' picture is one of them).
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import export_tiny

from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.serve.app import ServeConfig
from cleandift_deploy.serve.hub import AppConfig
from cleandift_deploy.serve.local import LocalServer

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
EXAMPLES = Path(__file__).parents[1] / "src/cleandift_deploy/serve/page/examples"
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
WAIT_S = 60

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run)"
)


@pytest.fixture(scope="module")
def server(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    out = tmp_path_factory.mktemp("page") / "tiny.onnx"
    artifact = export_tiny(
        tiny, out, batch=(1, 2, 8), image_size=(128, 128), size_range=((64, 64), (192, 192))
    )
    config = AppConfig((ServeConfig(str(artifact), threads=1, max_batch=4),))
    with LocalServer(config, port=0) as local:
        local.wait_ready(120)
        yield local


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1180")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _attribute(driver: Any, css: str, name: str) -> str | None:
    return driver.find_element(By.CSS_SELECTOR, css).get_attribute(name)


def _wait(driver: Any, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT_S).until(condition)


def _match_over_http(url: str, source: Path, target: Path, point: list[float]) -> dict:
    body = {
        "source": base64.b64encode(source.read_bytes()).decode(),
        "target": base64.b64encode(target.read_bytes()).decode(),
        "points": [point],
    }
    request = urllib.request.Request(
        f"{url}/match", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _shown(driver: Any, side: str, width: int) -> bool:
    photo = f"document.querySelector('#{side} .photo')"
    return driver.execute_script(f"return {photo}.complete && {photo}.naturalWidth") == width


def test_click_a_point_and_see_its_match(server: LocalServer, browser: Any) -> None:
    driver = browser
    driver.get(server.url)
    _wait(driver, lambda d: _attribute(d, "#match", "data-x"))  # the bundled example pair
    source, target = EXAMPLES / "astronaut.jpg", EXAMPLES / "coffee.jpg"
    for side, path in (("source", source), ("target", target)):
        field = driver.find_element(By.CSS_SELECTOR, f"#{side} input[type=file]")
        field.send_keys(str(path))
    _wait(driver, lambda d: _shown(d, "source", 384) and _shown(d, "target", 384))
    _wait(driver, lambda d: _attribute(d, "#match", "data-x"))
    photo = driver.find_element(By.CSS_SELECTOR, "#source .photo")
    ActionChains(driver).move_to_element_with_offset(photo, -60, -90).click().perform()
    _wait(driver, lambda d: _attribute(d, "#match", "data-x"))
    query = [float(_attribute(driver, "#query", f"data-{a}") or "nan") for a in "xy"]
    match = [float(_attribute(driver, "#match", f"data-{a}") or "nan") for a in "xy"]
    want = _match_over_http(server.url, source, target, query)
    assert max(abs(got - ref) for got, ref in zip(match, want["points"][0], strict=True)) <= 0.5
    score = float(_attribute(driver, "#match", "data-score") or "nan")
    assert abs(score - want["scores"][0]) < 1e-3

    view = driver.find_element(By.CSS_SELECTOR, "#source .view")
    view.send_keys(Keys.ARROW_RIGHT)
    assert float(_attribute(driver, "#query", "data-x") or "nan") == query[0] + 1
    _wait(driver, lambda d: _attribute(d, "#match", "data-x"))

    driver.find_element(By.ID, "show-matches").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#lines line"))
    assert _attribute(driver, "#target .heat", "src").startswith("data:image/png;base64,")
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "page-upload.png"))

    Select(driver.find_element(By.ID, "examples")).select_by_index(1)
    _wait(driver, lambda d: _shown(d, "source", 384) and _shown(d, "target", 384))
    _wait(driver, lambda d: d.find_element(By.ID, "truth").text.endswith("px"))
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#lines line"))
    driver.save_screenshot(str(ARTIFACTS / "page.png"))

    driver.set_window_size(390, 844)
    overflow = "return document.documentElement.scrollWidth - window.innerWidth"
    assert driver.execute_script(overflow) <= 0
    driver.save_screenshot(str(ARTIFACTS / "page-phone.png"))
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
