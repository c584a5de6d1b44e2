"""Both UIs in a real browser (headless Chromium) against a `make serve` stack.

A newcomer's path: the deployments page lists the deployments with the nightly schedule; a
custom run of ``train-nightly`` with only the dataset changed completes; an out-of-range
value is refused before a run exists; the Quick runs of ``train-nightly``, ``score-batch`` and
``sweep-weekly`` complete (the sweep's whole grid in MLflow); the MLflow UI
shows the run's metric chart, its plots, the registered model and its champion alias.
Screenshots go to ``test-artifacts/browser`` (gitignored).

Needs Debian's Chromium (``apt-get install -y chromium``) and Playwright for Python (the dev
extra). Locally the test is skipped without them; in CI (``CI=true``) it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from serve_stack import PROJECT_DIR, Stack, deployment, wait_for_run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = PROJECT_DIR / "test-artifacts" / "browser"
UI_TIMEOUT_MS = 120_000


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing: pip install -c constraints.txt -e '.[dev]'"
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return "Chromium is missing: apt-get install -y chromium (Debian/Ubuntu)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def served(served_stack: Stack) -> Stack:
    started = served_stack.make("serve")
    assert started.returncode == 0, started.stdout[-4000:] + started.stderr[-4000:]
    return served_stack


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _property(page: Any, label: str) -> Any:
    """A field of Prefect's parameter form, by its label (``Name (Optional)``)."""
    title = page.locator(".schema-form-property__label").filter(
        has_text=re.compile(rf"^{re.escape(label)}$")
    )
    return title.locator(
        "xpath=ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]"
    )


def _submit(page: Any) -> None:
    """Submit the custom-run form; once the run exists the UI leaves the form."""
    submit = page.get_by_role("button", name="Submit", exact=True)
    submit.scroll_into_view_if_needed()
    submit.click()
    try:
        page.wait_for_url(re.compile(r"/runs/flow-run/|/deployments/deployment/[0-9a-f-]+/?$"))
    except Exception:
        _shot(page, "03-submit-did-not-open-the-run")
        raise


def _quick_run(
    page: Any, stack: Stack, deployment_id: str, known: set[str], name: str
) -> dict[str, Any]:
    """Run > Quick run on a deployment's page; the new flow run."""
    for attempt in range(2):
        page.get_by_role("button", name="Run", exact=True).click()
        quick = page.get_by_text("Quick run", exact=True)
        quick.wait_for()
        quick.click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fresh = [r for r in _flow_runs(stack, deployment_id) if r["id"] not in known]
            if fresh:
                return fresh[0]
            page.wait_for_timeout(1000)
        _shot(page, f"05-{name}-quick-run-attempt-{attempt}")
        page.keyboard.press("Escape")
    return _new_run(stack, deployment_id, known)


def _flow_runs(stack: Stack, deployment_id: str) -> list[dict[str, Any]]:
    _, runs = stack.call(
        "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}}
    )
    return [run for run in runs if not run["auto_scheduled"]]  # not the upcoming cron runs


def _new_run(stack: Stack, deployment_id: str, known: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        fresh = [r for r in _flow_runs(stack, deployment_id) if r["id"] not in known]
        if fresh:
            return fresh[0]
        time.sleep(1)
    pytest.fail("the UI created no flow run")


def test_a_newcomer_runs_every_deployment_from_the_uis(browser: Any, served: Stack) -> None:
    stack = served
    ui = stack.api.removesuffix("/api")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)

    # The deployments page lists every deployment, the nightly one with its schedule
    page.goto(f"{ui}/deployments", wait_until="networkidle")
    for name in ("train-nightly", "score-batch", "sweep-weekly"):
        page.get_by_text(name, exact=True).wait_for()
    page.get_by_text("At 02:00 AM every day").wait_for()
    _shot(page, "01-deployments")

    nightly = deployment(stack, "train", "train-nightly")
    before = {run["id"] for run in _flow_runs(stack, nightly["id"])}
    # An out-of-range value is refused in the form: no run is created
    page.goto(f"{ui}/deployments/deployment/{nightly['id']}/run", wait_until="networkidle")
    _property(page, "Maxiter (Optional)").locator("input").fill("0")
    page.get_by_role("button", name="Submit", exact=True).click()
    refusal = re.compile("greater than or equal to 1|Validation failed", re.IGNORECASE)
    page.get_by_text(refusal).first.wait_for()
    _shot(page, "02-out-of-range-refused")
    assert {run["id"] for run in _flow_runs(stack, nightly["id"])} == before

    # A custom run with only the dataset changed (moons: 2 features) completes
    page.goto(f"{ui}/deployments/deployment/{nightly['id']}/run", wait_until="networkidle")
    dataset = _property(page, "Name (Optional)").locator(".p-select-button__control")
    dataset.click()
    dataset.press("ArrowDown")  # opens the list of choices
    page.get_by_role("option", name="moons", exact=True).click()
    page.get_by_role("listbox").wait_for(state="hidden")
    _property(page, "Name (Optional)").get_by_text("moons", exact=True).wait_for()
    _shot(page, "03-custom-run-form")
    _submit(page)
    custom = _new_run(stack, nightly["id"], before)
    finished = wait_for_run(stack, custom["id"])
    assert finished["state"]["type"] == "COMPLETED", stack.log("worker")
    assert finished["parameters"]["dataset"]["name"] == "moons"
    page.goto(f"{ui}/runs/flow-run/{custom['id']}", wait_until="networkidle")
    page.get_by_text("Completed").first.wait_for()
    _shot(page, "04-custom-run-completed")

    # The nightly Quick run leaves an iris champion, then score-batch's Quick run scores;
    # sweep-weekly's Quick run trains its whole grid
    quick_runs = {}
    for flow, name in (
        ("train", "train-nightly"),
        ("score", "score-batch"),
        ("sweep", "sweep-weekly"),
    ):
        target = deployment(stack, flow, name)
        known = {run["id"] for run in _flow_runs(stack, target["id"])}
        page.goto(f"{ui}/deployments/deployment/{target['id']}", wait_until="networkidle")
        run = _quick_run(page, stack, target["id"], known, name)
        finished = wait_for_run(stack, run["id"])
        assert finished["state"]["type"] == "COMPLETED", stack.log("worker")
        page.goto(f"{ui}/runs/flow-run/{run['id']}", wait_until="networkidle")
        page.get_by_text("Completed").first.wait_for()
        _shot(page, f"05-{name}-quick-run")
        quick_runs[name] = run["id"]

    # The MLflow UI shows the run in its experiment, its metric chart, plots and the model
    client = MlflowClient(stack.mlflow_uri)
    sweeps = client.get_experiment_by_name("qmlops-sweeps-weekly")
    assert sweeps is not None
    [sweep_parent] = client.search_runs(
        [sweeps.experiment_id], f"tags.`prefect.flow_run_id` = '{quick_runs['sweep-weekly']}'"
    )
    children = client.search_runs(
        [sweeps.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_parent.info.run_id}'"
    )
    assert len(children) == 8  # the grid: 2 ansätze x 2 depths x 2 seeds
    assert all(child.info.status == "FINISHED" for child in children)
    assert sweep_parent.data.tags["sweep.best_configuration"]
    experiment = client.get_experiment_by_name("qmlops-nightly")
    assert experiment is not None
    [tracked] = client.search_runs(
        [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{custom['id']}'"
    )
    _check_mlflow_ui(page, stack.mlflow_uri, experiment.experiment_id, tracked)
    page.close()


def _check_mlflow_ui(page: Any, mlflow_ui: str, experiment_id: str, tracked: Any) -> None:
    # MLflow 3.17's UI picks its view from a sidebar toggle (GenAI by default, remembered per
    # browser) or a workflowType query parameter, not from the experiment's kind tag; qmlops'
    # links carry the parameter.
    query = "?workflowType=machine_learning"
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs{query}", wait_until="load")
    page.get_by_text(tracked.info.run_name, exact=True).first.wait_for()
    _shot(page, "06-mlflow-experiment-runs")
    run_page = f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{tracked.info.run_id}"
    page.goto(f"{run_page}/model-metrics{query}", wait_until="load")
    page.get_by_text("circuit_depth", exact=True).first.wait_for()  # the first chart
    loss_chart = page.get_by_text("train_loss", exact=True)
    page.mouse.move(600, 600)
    for _ in range(30):  # charts are drawn when scrolled to; the loss curve is further down
        if loss_chart.count():
            break
        page.mouse.wheel(0, 800)
        page.wait_for_timeout(500)
    loss_chart.first.scroll_into_view_if_needed()
    _shot(page, "07-mlflow-metric-chart")
    page.goto(f"{run_page}/artifacts{query}", wait_until="load")
    page.get_by_text("plots", exact=True).first.click()
    page.get_by_text(re.compile(r"\.png$")).first.click()
    page.locator("img").last.wait_for()
    _shot(page, "08-mlflow-plots")

    # And the registry shows the dataset's own model with its champion alias
    page.goto(f"{mlflow_ui}/#/models/qmlops-moons{query}", wait_until="load")
    page.get_by_text("champion").first.wait_for()
    _shot(page, "09-mlflow-registered-model")
