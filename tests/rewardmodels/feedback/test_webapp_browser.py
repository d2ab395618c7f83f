"""The labelling page in a real headless Chromium (Debian's, driven by Playwright): clicks, keys, tokens, and a
scripted person labelling CartPole clips from the true reward, end to end into the loop-facing HumanLabeller.

Needs /usr/bin/chromium and the playwright package (``.ci/install-browser.sh`` installs both); skipped otherwise.
"""

import os
import shutil
import threading

import numpy as np
import pytest

from rewardmodels.feedback.clips import render_gif
from rewardmodels.feedback.human import HumanLabeller
from rewardmodels.feedback.label_store import LabelStore, Query, store_path
from rewardmodels.feedback.webapp import ServerThread, create_app
from tests.waiting import OUTER_TIMEOUT_S

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags this machine's closed network needs (Chromium otherwise retries Google's hosts at every start).
# Playwright adds --headless and a fresh temporary --user-data-dir itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = int(OUTER_TIMEOUT_S * 1000)  # every page wait waits for an event; this only bounds a broken test


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium at /usr/bin/chromium: run .ci/install-browser.sh (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: run "
                                   ".ci/install-browser.sh (pip install playwright; no `playwright install` needed)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    yield pg
    context.close()


def pair_id(page) -> str:
    return page.get_attribute("#pair", "data-pair-id") or ""


def wait_ready_after(page, previous: str | None) -> str:
    """Wait until the page shows a new pair (or says nothing is left); return the shown pair id ('' = none)."""
    page.wait_for_function(
        "prev => (document.body.dataset.state === 'ready' && document.getElementById('pair').dataset.pairId !== prev)"
        " || document.body.dataset.state === 'empty'", arg=previous)
    return pair_id(page)


def act(page, how: str) -> None:
    """``how`` is a button id (#btn-left ...) to click, or a key name to press."""
    if how.startswith("#"):
        page.click(how)
    else:
        page.keyboard.press(how)


def test_label_pairs_by_clicking_and_by_keyboard(page, tmp_path):
    run = tmp_path / "run"
    frames = np.zeros((4, 24, 36, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(4)[:, None, None] * 60
    render_gif(frames, run / "clips" / "a0.gif")
    render_gif(255 - frames, run / "clips" / "b0.gif")
    queries = [Query.segment("a0.gif", "b0.gif", pair_id="seg-0")]
    queries += [Query.text(f"Prompt {i}?", f"answer a{i}", f"<b>answer b{i}</b>", pair_id=f"txt-{i}")
                for i in range(6)]
    with LabelStore(store_path(run)) as store:
        store.enqueue(queries)
    # click, keys 2 / ArrowLeft / e / s / 0 / ArrowRight: every control the page offers
    plan = [("#btn-left", "left"), ("2", "right"), ("ArrowLeft", "left"), ("e", "equal"), ("s", "skip"),
            ("0", "equal"), ("ArrowRight", "right")]

    with ServerThread(create_app(run)) as url:
        page.goto(url)
        assert page.inner_text("#status").startswith("Enter your name")
        page.fill("#labeller", "Ada Lovelace")
        page.click("#save-name")
        shown = wait_ready_after(page, "")
        assert shown == "seg-0"
        page.wait_for_function("() => [...document.querySelectorAll('#pair img')].length === 2 && "
                               "[...document.querySelectorAll('#pair img')].every(i => i.complete && i.naturalWidth)")

        # keys typed into the name field are text, not labels
        page.focus("#labeller")
        page.keyboard.press("1")
        page.keyboard.press("Backspace")
        page.evaluate("document.activeElement.blur()")
        assert pair_id(page) == "seg-0" and page.get_attribute("body", "data-state") == "ready"

        expected = {}
        for how, choice in plan:
            current = pair_id(page)
            if current.startswith("txt-"):  # untrusted text is shown as text, never as markup
                i = current.split("-")[1]
                assert page.inner_text("#prompt") == f"Prompt {i}?"
                assert page.inner_text("#media-b") == f"<b>answer b{i}</b>"
                assert page.locator("#media-b b").count() == 0
            act(page, how)
            expected[current] = choice
            wait_ready_after(page, current)
        assert page.get_attribute("body", "data-state") == "empty"
        assert page.inner_text("#labelled") == "7" and page.inner_text("#queued") == "7"

        # the name is remembered by the browser: a reload starts labelling without asking again
        with LabelStore(store_path(run)) as store:
            store.enqueue([Query.text("Later?", "x", "y", pair_id="late-0")])
        page.reload()
        assert wait_ready_after(page, "") == "late-0"
        assert page.input_value("#labeller") == "Ada Lovelace"
        act(page, "1")
        expected["late-0"] = "left"
        wait_ready_after(page, "late-0")

    with LabelStore(store_path(run)) as store:
        rows = store.rows()
    assert {r["pair_id"]: r["choice"] for r in rows} == expected
    assert len(rows) == len(expected) and {r["labeller"] for r in rows} == {"Ada Lovelace"}


def test_token_link_sets_a_cookie_and_the_page_works(page, tmp_path):
    run = tmp_path / "run"
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text("p", "a", "b", pair_id="t-0")])
    token = "tok-" + "x" * 20
    with ServerThread(create_app(run, token=token)) as url:
        denied = page.goto(url)
        assert denied.status == 401
        page.goto(url + f"?token={token}")
        assert "token" not in page.url  # redirected to the clean address
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read the token
        page.fill("#labeller", "bob")
        page.click("#save-name")
        wait_ready_after(page, "")
        act(page, "#btn-right")
        wait_ready_after(page, "t-0")
    with LabelStore(store_path(run)) as store:
        assert [(r["pair_id"], r["choice"]) for r in store.rows()] == [("t-0", "right")]


def test_invitation_link_fixes_the_name_and_undo_brings_the_pair_back(page, tmp_path):
    run = tmp_path / "run"
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text(f"p{i}", "a", "b", pair_id=f"t-{i}") for i in range(2)])
        invite = store.invite("Ann")
    token = "tok-" + "x" * 20
    # served on loopback here, but configured as a public server: only an invitation may label
    with ServerThread(create_app(run, host="0.0.0.0", token=token)) as url:
        page.goto(url + f"?token={token}")  # the operator's token opens the page, not the labelling
        page.wait_for_function("() => document.getElementById('status').textContent.includes('invitation')")
        assert page.is_hidden("#who")

        page.goto(url + f"?invite={invite}")
        assert "invite" not in page.url
        assert wait_ready_after(page, "") == "t-0"
        assert page.input_value("#labeller") == "Ann" and page.get_attribute("#labeller", "readonly") is not None
        assert page.is_hidden("#save-name")
        act(page, "1")  # left...
        assert wait_ready_after(page, "t-0") == "t-1"
        act(page, "u")  # ...oops: undo shows t-0 again
        assert wait_ready_after(page, "t-1") == "t-0"
        assert page.inner_text("#status").startswith("Undone")
        act(page, "#btn-right")
        assert wait_ready_after(page, "t-0") == "t-1"
    with LabelStore(store_path(run)) as store:
        assert [(r["pair_id"], r["choice"], r["labeller"]) for r in store.rows()] == [("t-0", "right", "Ann")]


# -- end to end: CartPole clips, a scripted person who prefers the segment with the higher true return -------------
@pytest.mark.slow
def test_person_labels_cartpole_clips_like_the_oracle_teacher(page, tmp_path):
    from rewardmodels.ensemble import RewardEnsemble
    from rewardmodels.teachers import make_teacher
    from tests.rewardmodels.feedback.test_human import cartpole_pairs, oracle_choice

    n_pairs = 16
    pairs = cartpole_pairs(n_pairs + 200, segment_len=10, seed=1)
    shown, held_out = pairs.subset(np.arange(n_pairs)), pairs.subset(np.arange(n_pairs, len(pairs)))
    run = tmp_path / "run"
    human = HumanLabeller(run, renderer="CartPole-v1", timeout=OUTER_TIMEOUT_S, poll_s=0.05, max_side=120, fps=20)
    # The ids people will see (content hashes; the loop's call below renders nothing new and gets the same ids).
    ids = human.enqueue_observations(shown.obs_a, shown.obs_b, shown.mask_a, shown.mask_b)
    ret_a, ret_b = shown.true_returns()
    truth = {pid: oracle_choice(ret_a[k], ret_b[k]) for k, pid in enumerate(ids)}
    assert len(set(truth.values()) - {"equal"}) == 2  # both sides win sometimes: the person must really look

    result = {}
    loop = threading.Thread(target=lambda: result.update(labels=human.label(  # the loop's Labeller call
        shown.true_rew_a, shown.true_rew_b, shown.mask_a, shown.mask_b, obs_a=shown.obs_a, obs_b=shown.obs_b)),
        daemon=True)
    loop.start()

    keys = {"left": ["#btn-left", "1", "ArrowLeft"], "right": ["#btn-right", "2", "ArrowRight"],
            "equal": ["#btn-equal", "e", "0"]}
    with ServerThread(create_app(run)) as url:
        page.goto(url)
        page.fill("#labeller", "scripted person")
        page.click("#save-name")
        current, n = wait_ready_after(page, ""), 0
        while current:
            page.wait_for_function("() => [...document.querySelectorAll('#pair img')].every("
                                   "i => i.complete && i.naturalWidth > 0)")  # the person watches both clips
            act(page, keys[truth[current]][n % 3])
            current, n = wait_ready_after(page, current), n + 1
    loop.join(timeout=OUTER_TIMEOUT_S)
    assert n == n_pairs and "labels" in result

    oracle = make_teacher("oracle").label(shown.true_rew_a, shown.true_rew_b, shown.mask_a, shown.mask_b)
    np.testing.assert_array_equal(result["labels"], oracle)  # exactly the synthetic oracle's labels

    # The human labels teach a reward model that ranks unseen segment pairs by their true return.
    labelled = shown.with_labels(result["labels"])
    ensemble = RewardEnsemble.mlp(pairs.obs_space, pairs.act_space, n_members=1, seed=0)
    ensemble.fit(labelled, steps=100, bootstrap=False)
    probs = ensemble.preference_probs(held_out).mean(axis=0)  # (members, N) -> (N,)
    ra, rb = held_out.true_returns()
    decided = ~np.isclose(ra, rb)
    accuracy = float(np.mean((probs[decided] > 0.5) == (ra[decided] > rb[decided])))
    assert decided.sum() >= 50 and accuracy >= 0.8, accuracy


class AnswerKey:
    """Wraps the loop's HumanLabeller and notes, for every pair it queues, what a person who prefers the higher true
    return would choose: the scripted person's knowledge. Labels still come only from the page."""

    needs_media = True

    def __init__(self, human):
        self.human, self.truth, self.calls = human, {}, 0

    def label(self, rew_a, rew_b, mask_a, mask_b, *, obs_a, obs_b):
        from tests.rewardmodels.feedback.test_human import oracle_choice

        ids = self.human.enqueue_observations(obs_a, obs_b, mask_a, mask_b)  # content-hash ids: queued once
        ret_a, ret_b = np.sum(rew_a * mask_a, axis=1), np.sum(rew_b * mask_b, axis=1)
        self.truth.update({pid: oracle_choice(ret_a[k], ret_b[k]) for k, pid in enumerate(ids)})
        self.calls += 1
        return self.human.label(rew_a, rew_b, mask_a, mask_b, obs_a=obs_a, obs_b=obs_b)


@pytest.mark.slow
def test_person_in_the_browser_teaches_the_loop_and_the_agent_improves_as_with_the_teacher(page, tmp_path):
    import time

    from agents.loop.control.run import PrefsConfig, build_loop

    settings = dict(labels=24, steps=12_000, rounds=3, seed=0, eval_episodes=10, eval_every=0, progress_bar=False,
                    label_until=0.8, schedule_c=0.3)  # fixed here, so tuning the CartPole preset leaves this run be
    teacher_loop = build_loop(PrefsConfig.for_env("CartPole-v1", **settings), tmp_path / "teacher")
    teacher_summary = teacher_loop.run()
    teacher_loop.agent.close()

    loop = build_loop(PrefsConfig.for_env("CartPole-v1", labeller="human", label_timeout=OUTER_TIMEOUT_S, **settings),
                      tmp_path / "human")
    key = AnswerKey(loop.labeller)
    loop.labeller = key
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=loop.run()), daemon=True)
    thread.start()
    keys = {"left": ["#btn-left", "1", "ArrowLeft"], "right": ["#btn-right", "2", "ArrowRight"],
            "equal": ["#btn-equal", "e", "0"]}
    done, n = "", 0
    with ServerThread(create_app(tmp_path / "human")) as url:
        page.goto(url)
        page.fill("#labeller", "scripted person")
        page.click("#save-name")
        deadline = time.monotonic() + OUTER_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline:
            page.wait_for_function("() => ['ready', 'empty'].includes(document.body.dataset.state)")
            current = pair_id(page)
            if page.evaluate("document.body.dataset.state") != "ready" or current == done or current not in key.truth:
                time.sleep(0.1)  # nothing new yet: the loop is training, or the page is fetching
                continue
            page.wait_for_function("() => [...document.querySelectorAll('#pair img')].every("
                                   "i => i.complete && i.naturalWidth > 0)")  # the person watches both clips
            act(page, keys[key.truth[current]][n % 3])
            done, n = current, n + 1
        thread.join(timeout=OUTER_TIMEOUT_S)
    loop.agent.close()
    summary = result["summary"]
    assert n == 24 and key.calls >= 2 and summary["labels_used"] == 24
    # the person's labels are exactly the oracle teacher's on the same pairs, so the run is the teacher's run
    np.testing.assert_array_equal(loop.dataset.labels, teacher_loop.dataset.labels)
    assert summary["true_return_mean"] == pytest.approx(teacher_summary["true_return_mean"])
    assert summary["true_return_mean"] > 60  # a random CartPole policy lasts about 22 steps
    with LabelStore(store_path(tmp_path / "human")) as store:
        assert len(store.rows()) == 24 and {r["labeller"] for r in store.rows()} == {"scripted person"}


def test_people_see_the_runs_instructions_and_status_as_text(page, tmp_path):
    run = tmp_path / "run"
    labeller = HumanLabeller(run, instructions="Judge the <i>positivity</i> of the review.")
    labeller.store.enqueue([Query.text("Prompt?", "good", "bad", pair_id="t-0")])
    labeller.post_status("Round 2: 40 labels so far. Before it saw your last labels, the reward model agreed with "
                         "75% of them.")
    with ServerThread(create_app(run)) as url:
        page.goto(url)
        page.fill("#labeller", "ada")
        page.click("#save-name")
        wait_ready_after(page, "")
        assert page.is_visible("#instructions")
        assert page.inner_text("#instructions-text") == "Judge the <i>positivity</i> of the review."
        assert page.locator("#instructions-text i").count() == 0  # shown as text, never as markup
        assert "agreed with 75%" in page.inner_text("#run-status")
    labeller.close()


def test_people_see_two_conversations_turn_by_turn(page, tmp_path):
    run = tmp_path / "run"
    labeller = HumanLabeller(run)

    def conversation(answer: str) -> list[dict]:
        return [{"role": "user", "content": "Guess my number."}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "<b>Higher.</b>"}, {"role": "assistant", "content": answer}]

    ids = labeller.enqueue_texts(["Guess my number."], ["5 Higher. 7"], ["5 Higher. 9"],
                                 conversations=[(conversation("7"), conversation("9"))])
    with ServerThread(create_app(run)) as url:
        page.goto(url)
        page.fill("#labeller", "ada")
        page.click("#save-name")
        wait_ready_after(page, "")
        assert page.inner_text("#prompt") == "Guess my number."  # the environment's first turn, once
        for side, answer in (("a", "7"), ("b", "9")):
            turns = page.locator(f"#media-{side} .turn")
            assert turns.count() == 3
            assert [turns.nth(i).get_attribute("class") for i in range(3)] == [
                "turn assistant", "turn user", "turn assistant"]
            assert [turns.nth(i).locator(".content").inner_text() for i in range(3)] == ["5", "<b>Higher.</b>", answer]
            assert page.locator(f"#media-{side} .turn b").count() == 0  # untrusted text, never markup
        page.click("#btn-right")
        wait_ready_after(page, ids[0])
    assert labeller.store.labels_array(ids).tolist() == [0.0]
    labeller.close()
