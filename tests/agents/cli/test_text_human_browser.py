"""People label text in the loop, end to end: ``rlhf-gym text --labeller human`` queues completion pairs of the
current policy and waits; ``rlhf-gym label --run DIR`` serves them; a scripted person in a real headless Chromium
prefers the response with more "good" in it, through two rounds; the policy's learned reward rises.

Needs /usr/bin/chromium and playwright (skipped otherwise, as tests/rewardmodels/feedback/test_webapp_browser.py).
"""

import json
import os
import subprocess
import sys

import pytest

from rewardmodels.feedback.label_store import LabelStore, store_path
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD
from tests.rewardmodels.feedback.test_webapp_browser import browser, page, wait_ready_after  # noqa: F401
from tests.waiting import OUTER_TIMEOUT_S, wait_until
from textenv.testing import make_tiny_lm

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LABELS = 40


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, env=env, text=True, **kwargs)


def choice(a: str, b: str) -> str:
    """The scripted person: the response with more of the target word wins; as many: equal."""
    na, nb = a.split().count(TARGET_WORD), b.split().count(TARGET_WORD)
    return "left" if na > nb else "right" if nb > na else "equal"


def test_people_label_a_text_run_through_two_rounds_and_its_learned_reward_rises(page, tmp_path):  # noqa: F811
    model, tokenizer = make_tiny_lm()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "tokenizer")  # on its own: see tests/agents/cli/test_text.py checkpoint()
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    run = tmp_path / "run"
    # Output goes to files, not pipes: a pipe nobody reads while the run logs would fill up and stall it.
    text_log, server_log = open(tmp_path / "text.log", "w"), open(tmp_path / "label.log", "w")  # noqa: SIM115
    text = cli("text", "--model", str(tmp_path / "model"), "--tokenizer", str(tmp_path / "tokenizer"),
               "--prompts", str(tmp_path / "prompts.txt"), "--labeller", "human", "--rounds", "2",
               "--pairs", str(LABELS), "--algo", "grpo", "--iterations", "12", "--lr", "0.01", "--kl-coef", "0.01",
               "--max-new-tokens", "6", "--max-prompt-tokens", "4", "--eval-prompts", "2", "--samples", "0",
               "--no-progress", "--out", str(run), stdout=text_log, stderr=subprocess.STDOUT)
    server = None
    try:
        # the run creates its label store when it starts
        wait_until(store_path(run).exists, f"label store of the text run ({tmp_path / 'text.log'})",
                   alive=lambda: text.poll() is None)
        server = cli("label", "--run", str(run), "--port", "0", stdout=server_log, stderr=subprocess.STDOUT)
        wait_until(lambda: "Labelling server" in (tmp_path / "label.log").read_text(),  # its first line: the URL
                   f"the label server's URL ({tmp_path / 'label.log'})", alive=lambda: server.poll() is None)
        first = (tmp_path / "label.log").read_text().split("Labelling server", 1)[1].splitlines()[0]
        url = first.split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:"), url

        page.goto(url)
        page.fill("#labeller", "scripted person")
        page.click("#save-name")
        labelled, current = 0, ""
        while labelled < LABELS:
            page.set_default_timeout(OUTER_TIMEOUT_S * 1000)  # between rounds the policy trains: the page polls
            current = wait_ready_after(page, current)
            if not current:
                continue
            a, b = page.inner_text("#media-a"), page.inner_text("#media-b")
            page.click({"left": "#btn-left", "right": "#btn-right", "equal": "#btn-equal"}[choice(a, b)])
            labelled += 1
        assert text.wait(timeout=OUTER_TIMEOUT_S) == 0, (tmp_path / "text.log").read_text()
    finally:
        for proc in (text, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        text_log.close()
        server_log.close()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["labels_used"] == LABELS and summary["rounds"] == 2 and summary["finished"]
    with LabelStore(store_path(run)) as store:
        rows = store.rows()
    assert len(rows) == LABELS and {r["labeller"] for r in rows} == {"scripted person"}
    # Both rounds were labelled by the person: the second round's pairs came from the policy after one improvement.
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    used = [m["labels/used"] for m in metrics if "labels/used" in m]
    assert used[0] < LABELS and used[-1] == LABELS
    # The learned reward (the final reward model, fitted on the person's labels) of the policy's held-out completions
    # rises from the initial policy to the trained one.
    assert summary["learned_reward_after"] > summary["learned_reward_before"], summary
