"""The labelling server in the open (issue 15, failure 3): invitations, name rules, the per-person cap, origins,
run tags, undo, rate-limited token guesses, token length, and hostile JSON. Each test failed before the fix."""

import json
import logging

import pytest

from rewardmodels.feedback.label_store import LabelStore, Query, store_path
from rewardmodels.feedback.webapp import InsecureBindError, create_app
from rewardmodels.feedback.webapp.auth import MIN_TOKEN_LENGTH

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text(f"p{i}", f"a{i}", f"b{i}", pair_id=f"q-{i}", run="r1") for i in range(45)])
        store.enqueue([Query.text("other", "x", "y", pair_id="other-0", run="r2")])
    return run


def rows(run):
    with LabelStore(store_path(run)) as store:
        return [(r["pair_id"], r["choice"], r["labeller"]) for r in store.rows()]


def invite(run, name):
    with LabelStore(store_path(run)) as store:
        return store.invite(name)


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def public_client(run, **kw):
    return create_app(run, host="0.0.0.0", token=TOKEN, **kw).test_client()


# -- names -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alice\n", "alice\r\n", " alice", "alice ", "\u200balice", "al\u0000ice", "a\tb"])
def test_names_with_control_characters_or_outer_spaces_are_refused(run_dir, name):
    client = create_app(run_dir).test_client()
    assert post(client, "/api/label", {"pair_id": "q-0", "label": "left", "labeller": name}).status_code == 400
    assert client.get("/api/next", query_string={"labeller": name}).status_code == 400
    assert rows(run_dir) == []


def test_alice_and_Alice_are_one_person(tmp_path):
    """Case folding (after NFKC): one label per pair and one reserved pair, however the name is typed."""
    with LabelStore(tmp_path / "labels.sqlite", labels_per_pair=3) as store:
        store.enqueue([Query.text(f"p{i}", "a", "b", pair_id=f"q-{i}") for i in range(3)])
        assert store.next_pair("alice")["pair_id"] == "q-0"
        assert store.next_pair("ALICE")["pair_id"] == "q-0"  # the same person's lease, not a second pair
        assert store.next_pair("\uff21lice")["pair_id"] == "q-0"  # fullwidth 'A' is 'A' after NFKC
        store.submit("q-0", "left", "Alice")
        client = create_app(tmp_path, store=store, clip_root=tmp_path / "clips").test_client()
        again = post(client, "/api/label", {"pair_id": "q-0", "label": "right", "labeller": "alice"})
        assert again.status_code == 409 and "already labelled" in again.get_json()["error"]
        assert client.get("/api/next?labeller=aLiCe").get_json()["pair"]["pair_id"] == "q-1"
        assert [(r["pair_id"], r["labeller"]) for r in store.rows()] == [("q-0", "Alice")]  # stored as typed


# -- invitations and who labels ------------------------------------------------------------------------------------
def test_public_server_refuses_self_declared_names_and_labels_as_the_invited_person(run_dir):
    client = public_client(run_dir)
    token = {"X-Label-Token": TOKEN}
    for response in (client.get("/api/next?labeller=ann", headers=token),
                     post(client, "/api/label", {"pair_id": "q-0", "label": "left", "labeller": "ann"},
                          headers=token),
                     post(client, "/api/undo", {"labeller": "ann"}, headers=token)):
        assert response.status_code == 403 and "--invite" in response.get_json()["error"]
    assert client.get("/api/me", headers=token).get_json() == {"name": None, "self_declared": False}

    ann = invite(run_dir, "Ann")
    first = client.get(f"/?invite={ann}")
    assert first.status_code == 302 and "invite" not in first.headers["Location"]
    assert "HttpOnly" in first.headers["Set-Cookie"]
    assert client.get("/api/me").get_json() == {"name": "Ann", "self_declared": False}  # the cookie is enough
    pair = client.get("/api/next").get_json()["pair"]["pair_id"]
    assert post(client, "/api/label", {"pair_id": pair, "label": "left"}).status_code == 200
    impostor = post(client, "/api/label", {"pair_id": "q-1", "label": "left", "labeller": "bob"})
    assert impostor.status_code == 403 and "Ann" in impostor.get_json()["error"]
    assert post(client, "/api/label", {"pair_id": "q-1", "label": "right", "labeller": "ann"}).status_code == 200
    assert rows(run_dir) == [(pair, "left", "Ann"), ("q-1", "right", "Ann")]


def test_a_new_or_revoked_invitation_stops_the_old_link(run_dir):
    client = public_client(run_dir)
    old = invite(run_dir, "ann")
    assert client.get("/api/progress", headers={"X-Label-Invite": old}).status_code == 200
    new = invite(run_dir, "ann")
    assert client.get("/api/progress", headers={"X-Label-Invite": old}).status_code == 403
    assert client.get("/api/progress", headers={"X-Label-Invite": new}).status_code == 200
    with LabelStore(store_path(run_dir)) as store:
        assert store.revoke("ANN") and not store.revoke("ann")
    assert client.get("/api/progress", headers={"X-Label-Invite": new}).status_code == 403


def test_one_person_cannot_reserve_the_queue_away(run_dir):
    """The reported attack: 60 /api/next calls starved a real labeller. Now a person holds one pair at a time, and
    on a public server a name is a person (an invitation), so throwaway names are not available."""
    client = public_client(run_dir)
    mallory = {"X-Label-Invite": invite(run_dir, "mallory")}
    held = {client.get("/api/next", headers=mallory).get_json()["pair"]["pair_id"] for _ in range(60)}
    assert held == {"q-0"}
    throwaway = [client.get(f"/api/next?labeller=x{i}", headers={"X-Label-Token": TOKEN}).status_code
                 for i in range(10)]
    assert set(throwaway) == {403}
    real = {"X-Label-Invite": invite(run_dir, "real person")}
    done = 0
    while (pair := client.get("/api/next", headers=real).get_json()["pair"]) is not None:
        assert post(client, "/api/label", {"pair_id": pair["pair_id"], "label": "left"}, headers=real).status_code \
            == 200
        done += 1
    assert done == 45  # every pair of the server's tag but mallory's one (and other-0 of tag r2: see run_tag)


# -- origins ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, status", [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Origin": "http://localhost:9999"}, 403),  # another port is another origin
    ({"Referer": "http://evil.example/page"}, 403),
    ({"Origin": "http://localhost", "Referer": "http://localhost/"}, 200),
    ({"Referer": "http://localhost/"}, 200),
    ({}, 200),  # a script (curl): no browser for a hostile page to drive
])
def test_writes_from_another_origin_are_refused_without_sec_fetch_site(run_dir, headers, status):
    client = create_app(run_dir).test_client()
    response = post(client, "/api/label", {"pair_id": "q-0", "label": "left", "labeller": "ann"}, headers=headers)
    assert response.status_code == status, response.get_json()
    assert len(rows(run_dir)) == (status == 200)


def test_allowed_origins_for_a_reverse_proxy(run_dir):
    client = create_app(run_dir, allowed_origins=("https://labels.example.org",)).test_client()
    body = {"pair_id": "q-0", "label": "left", "labeller": "ann"}
    assert post(client, "/api/label", body, headers={"Origin": "https://labels.example.org"}).status_code == 200
    with pytest.raises(ValueError, match="allowed_origins"):
        create_app(run_dir, allowed_origins=("labels.example.org",))


# -- run tag -----------------------------------------------------------------------------------------------------------
def test_run_tag_confines_labelling_to_its_pairs(run_dir):
    client = create_app(run_dir, run_tag="r2").test_client()
    other = post(client, "/api/label", {"pair_id": "q-0", "label": "left", "labeller": "ann"})
    assert other.status_code == 404 and "run tag 'r2'" in other.get_json()["error"]
    assert rows(run_dir) == []
    assert client.get("/api/next?labeller=ann").get_json()["pair"]["pair_id"] == "other-0"
    assert post(client, "/api/label", {"pair_id": "other-0", "label": "left", "labeller": "ann"}).status_code == 200
    assert client.get("/api/progress").get_json() == {"queued": 1, "labelled": 1, "labels": 1, "notes": {}}
    r1 = create_app(run_dir, run_tag="r1").test_client()
    assert post(r1, "/api/undo", {"labeller": "ann"}).status_code == 404  # her r2 label is not r1's to undo
    assert rows(run_dir) == [("other-0", "left", "ann")]


# -- undo ------------------------------------------------------------------------------------------------------------
def test_undo_takes_back_the_last_label_and_shows_the_pair_again(run_dir):
    client = create_app(run_dir).test_client()
    for pid, choice in (("q-0", "left"), ("q-1", "right")):
        assert client.get("/api/next?labeller=ann").get_json()["pair"]["pair_id"] == pid
        assert post(client, "/api/label", {"pair_id": pid, "label": choice, "labeller": "ann"}).status_code == 200
    assert post(client, "/api/label", {"pair_id": "q-5", "label": "equal", "labeller": "bob"}).status_code == 200
    undone = post(client, "/api/undo", {"labeller": "ANN"})
    assert undone.status_code == 200 and undone.get_json()["pair_id"] == "q-1"
    assert rows(run_dir) == [("q-0", "left", "ann"), ("q-5", "equal", "bob")]  # bob's later label is not hers
    assert client.get("/api/next?labeller=ann").get_json()["pair"]["pair_id"] == "q-1"  # shown again, to her
    assert client.get("/api/next?labeller=carl").get_json()["pair"]["pair_id"] == "q-2"  # held for ann
    assert post(client, "/api/label", {"pair_id": "q-1", "label": "left", "labeller": "ann"}).status_code == 200
    with LabelStore(store_path(run_dir)) as store:
        audit = store._conn().execute("SELECT pair_id, choice, labeller FROM undone").fetchall()
    assert audit == [("q-1", "right", "ann")]  # the taken-back label is kept for audit
    assert post(client, "/api/undo", {"labeller": "nobody"}).status_code == 404


def test_undo_window(run_dir):
    client = create_app(run_dir, undo_s=0.0).test_client()
    assert post(client, "/api/label", {"pair_id": "q-0", "label": "left", "labeller": "ann"}).status_code == 200
    late = post(client, "/api/undo", {"labeller": "ann"})
    assert late.status_code == 409 and "undone for 0 s" in late.get_json()["error"]
    assert len(rows(run_dir)) == 1


# -- token guessing and token length -------------------------------------------------------------------------------
def test_wrong_tokens_are_rate_limited_per_address_and_logged(run_dir, caplog):
    client = public_client(run_dir, max_failures=5, failure_window_s=60)
    attacker = {"REMOTE_ADDR": "203.0.113.9"}
    caplog.set_level(logging.WARNING, logger="rewardmodels.feedback.webapp.auth")
    for i in range(5):
        response = client.get("/api/progress", headers={"X-Label-Token": f"guess-{i}"}, environ_base=attacker)
        assert response.status_code == 403
    blocked = client.get("/api/progress", headers={"X-Label-Token": "guess-5"}, environ_base=attacker)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert client.get("/?invite=made-up", environ_base=attacker).status_code == 429
    assert client.get("/?token=guess-6", environ_base=attacker).status_code == 429
    ok = client.get("/api/progress", headers={"X-Label-Token": TOKEN}, environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert ok.status_code == 200  # other addresses are not affected
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 5 and all("203.0.113.9" in m and "wrong access token" in m for m in logged)
    assert not any("guess-" in m for m in logged)  # the guesses themselves are not written to the log


def test_failures_from_an_address_never_lock_out_a_valid_credential_from_it(run_dir):
    """Behind a NAT or a proxy people share an address: ten typos (or someone's guessing) from it used to give
    everyone there 429 for a minute, the right token and valid invitations included."""
    client = public_client(run_dir, max_failures=3, failure_window_s=60)
    shared = {"REMOTE_ADDR": "203.0.113.9"}
    for i in range(10):
        client.get("/api/progress", headers={"X-Label-Token": f"typo-{i}"}, environ_base=shared)
    assert client.get("/api/progress", headers={"X-Label-Token": "typo"}, environ_base=shared).status_code == 429
    assert client.get("/api/progress", headers={"X-Label-Token": TOKEN}, environ_base=shared).status_code == 200
    ann = invite(run_dir, "Ann")
    first = client.get(f"/?invite={ann}", environ_base=shared)  # her link, opened during the block
    assert first.status_code == 302
    pair = client.get("/api/next", environ_base=shared).get_json()["pair"]["pair_id"]  # her cookie
    assert post(client, "/api/label", {"pair_id": pair, "label": "left"}, environ_base=shared).status_code == 200
    assert rows(run_dir) == [(pair, "left", "Ann")]


def test_behind_a_trusted_proxy_the_limit_counts_the_forwarded_client(run_dir):
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    client = public_client(run_dir, max_failures=3, trusted_proxies=("10.0.0.0/24",))

    def via_proxy(forwarded, token):
        return client.get("/api/progress", headers={"X-Label-Token": token, "X-Forwarded-For": forwarded},
                          environ_base=proxy).status_code

    for i in range(5):
        via_proxy("198.51.100.1, 203.0.113.9", f"guess-{i}")  # the left hop is the client's own claim: ignored
    assert via_proxy("203.0.113.9", "guess") == 429
    assert via_proxy("198.51.100.7", "typo") == 403  # another person through the same proxy: not blocked
    assert via_proxy("203.0.113.9, 10.0.0.9", "typo") == 429  # a chain of trusted proxies: the client before it
    # without the proxy trusted (the default), X-Forwarded-For is whatever a client wrote: never believed
    direct = public_client(run_dir, max_failures=3)
    for i in range(5):
        spoofed = {"X-Label-Token": f"guess-{i}", "X-Forwarded-For": f"192.0.2.{i}"}
        direct.get("/api/progress", headers=spoofed, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert direct.get("/api/progress", headers={"X-Label-Token": "g", "X-Forwarded-For": "192.0.2.99"},
                      environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 429
    with pytest.raises(ValueError, match="not an IP address or network"):
        public_client(run_dir, trusted_proxies=("proxy.example.org",))


def test_client_keys():
    from rewardmodels.feedback.webapp.auth import TrustedProxies, client_key

    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    proxies = TrustedProxies(["10.0.0.1", "2001:db8:ffff::/48"])
    assert proxies.client("10.0.0.1", "[2001:db8:1:2::5]:443") == "2001:db8:1:2::/64"
    assert proxies.client("10.0.0.1", "203.0.113.9:5555") == "203.0.113.9"
    assert proxies.client("10.0.0.1", "203.0.113.9, not-an-ip") == "10.0.0.1"  # a garbled hop: trust stops there
    assert proxies.client("10.0.0.2", "203.0.113.9") == "10.0.0.2"  # not a trusted proxy
    assert proxies.client("10.0.0.1", None) == "10.0.0.1"


def test_public_bind_needs_a_token_of_minimum_length(run_dir):
    for short in ("x", "a" * (MIN_TOKEN_LENGTH - 1)):
        with pytest.raises(InsecureBindError, match=f"at least {MIN_TOKEN_LENGTH}"):
            create_app(run_dir, host="0.0.0.0", token=short)
    create_app(run_dir, host="0.0.0.0", token="a" * MIN_TOKEN_LENGTH)
    create_app(run_dir, token="x")  # on loopback a short token is the user's business
    for bad in ("", "has space", "tab\t", "é" * 20):
        with pytest.raises(ValueError, match="printable ASCII"):
            create_app(run_dir, host="0.0.0.0", token=bad)


# -- hostile JSON --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", ["[" * 5000, '{"pair_id": ' + "[" * 5000, '{"a":' * 2000 + "1" + "}" * 2000],
                         ids=["arrays", "in-a-field", "objects"])
def test_deeply_nested_json_is_a_400_not_a_crash(run_dir, body):
    client = create_app(run_dir).test_client()
    for path in ("/api/label", "/api/undo"):
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code == 400, (path, response.status_code)
        assert response.get_json()["ok"] is False
    assert rows(run_dir) == []
