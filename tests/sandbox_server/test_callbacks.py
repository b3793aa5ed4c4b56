"""The sandbox over real loopback HTTP: the outcome engine and callback delivery (the callbacks per outcome,
how an outcome is chosen, seeded transactions and their status). Answer shapes and the CLI are test_api.py.
"""

from __future__ import annotations

import re
import socket
import time
from decimal import Decimal

import pytest
import requests

from pipeline.azampay import AzamPayClient
from sandbox.outcomes import OUTCOMES
from sandbox.testing import running_sandbox
from tests.sandbox_server.helpers import (
    EXTERNAL_ID,
    KNOWN_STATUSES,
    LIVE_KEYS,
    MSISDN,
    Receiver,
    fixture,
    pay,
)

# --- callbacks per outcome ------------------------------------------------------------------------


def assert_live_shape(body: dict, txn: str, props: dict) -> None:
    assert set(body) == LIVE_KEYS
    assert body["utilityref"] == EXTERNAL_ID
    assert body["reference"] == body["externalreference"] == body["transid"] == txn
    assert body["msisdn"] == MSISDN and body["operator"] == "Halopesa"
    assert body["user"] is None and body["clientId"] is None and body["submerchantAcc"] is None
    assert body["additionalProperties"] == props
    assert isinstance(body["amount"], str)


@pytest.mark.parametrize(
    "outcome, statuses, mno_ref",
    [
        ("success", ["success"], True),
        ("failure", ["failure"], False),
        ("cancelled", ["cancelled"], False),
        ("duplicate", ["success", "success"], True),
        ("out_of_order", ["failure", "success"], None),
    ],
)
def test_callbacks_in_live_shape(client, sandbox, receiver, outcome, statuses, mno_ref):
    txn = pay(client, outcome)
    bodies = receiver.wait_for(len(statuses))
    assert [b["transactionstatus"] for b in bodies] == statuses
    for body in bodies:
        assert_live_shape(body, txn, {"sandbox_outcome": outcome})
        assert body["amount"] == "25000"
        assert body["password"] == "hook-pass"
    if mno_ref is not None:
        assert all(isinstance(b["mnoreference"], str) == mno_ref for b in bodies)
    if outcome == "duplicate":
        assert bodies[0] == bodies[1]
    assert len(receiver.wait_for(len(statuses) + 1, timeout=0.3)) == len(statuses)  # and nothing more
    assert [c["http_status"] for c in sandbox.callbacks()] == [200] * len(statuses)


def test_callback_matches_the_fixture_apart_from_ids(client, receiver):
    txn = pay(client, amount="25000")
    body = receiver.wait_for(1)[0]
    expected = fixture("callback_live_shape_success.json")
    for key in (
        "message",
        "transactionstatus",
        "operator",
        "utilityref",
        "amount",
        "msisdn",
        "submerchantAcc",
        "user",
        "clientId",
    ):
        assert body[key] == expected[key], key
    assert re.fullmatch(r"[0-9a-f]{32}", txn)


def test_forged_callback_carries_a_wrong_password_and_status_says_success(client, sandbox, receiver):
    txn = pay(client, "forged")
    body = receiver.wait_for(1)[0]
    assert body["transactionstatus"] == "success"
    assert body["password"] and body["password"] != "hook-pass"
    assert client.transaction_status(txn, "Halopesa").status == "SUCCESS"


def test_forged_without_a_configured_password_still_sends_one(receiver):
    with running_sandbox(callback_url=receiver.url) as sb:
        client = AzamPayClient(sb.azampay_config())
        pay(client)
        pay(client, "forged")
        first, second = receiver.wait_for(2)
        by_status = sorted([first, second], key=lambda b: b["password"] is None)
        assert by_status[0]["password"] == "forged-password"
        assert by_status[1]["password"] is None  # password null unless a webhook password is configured


def test_amount_mismatch_sends_a_different_amount(client, receiver):
    pay(client, "amount_mismatch", amount="25000.50")
    body = receiver.wait_for(1)[0]
    assert body["transactionstatus"] == "success"
    assert Decimal(body["amount"]) != Decimal("25000.50")
    assert body["amount"] == "25001.50"


def test_unknown_status_sends_an_unrecognised_transactionstatus(client, receiver):
    txn = pay(client, "unknown_status")
    body = receiver.wait_for(1)[0]
    assert body["transactionstatus"].lower() not in KNOWN_STATUSES
    answer = client.transaction_status(txn, "Halopesa")
    assert (answer.status, answer.text) == ("UNKNOWN", "Reversal queued.")


@pytest.mark.parametrize("outcome, status", [("no_callback", "SUCCESS"), ("pending", "PENDING")])
def test_outcomes_without_callback(client, sandbox, receiver, outcome, status):
    silent = pay(client, outcome)
    loud = pay(client, "success", external_id="RHCI-DN-43-20260114093013")  # queued after the silent one
    bodies = receiver.wait_for(1)
    assert len(receiver.wait_for(2, timeout=0.3)) == 1
    assert bodies[0]["reference"] == loud
    assert sandbox.transaction(silent)["callbacks_planned"] == 0
    assert client.transaction_status(silent, "Halopesa").status == status


def test_delayed_callback_arrives_after_the_delay(client, receiver):
    started = time.monotonic()
    pay(client, "delayed")
    assert receiver.wait_for(1, timeout=0.2) == []
    body = receiver.wait_for(1, timeout=3)[0]
    assert receiver.arrived[0] - started >= 0.3
    assert body["transactionstatus"] == "success"


def test_delay_can_be_set_per_request(client, receiver):
    started = time.monotonic()
    pay(client, "delayed", extra={"sandbox_delay": 0.05})
    receiver.wait_for(1, timeout=2)
    assert 0.05 <= receiver.arrived[0] - started < 0.3


def test_out_of_order_arrives_failure_first(client, receiver):
    pay(client, "out_of_order")
    bodies = receiver.wait_for(2)
    assert [b["transactionstatus"] for b in bodies] == ["failure", "success"]
    assert receiver.arrived[1] - receiver.arrived[0] >= 0.2


def test_checkout_answer_does_not_wait_for_the_callback():
    slow = Receiver(delay=1.0)
    try:
        with running_sandbox(callback_url=slow.url) as sb:
            client = AzamPayClient(sb.azampay_config())
            client.payment_partners()
            started = time.monotonic()
            pay(client)
            assert time.monotonic() - started < 0.5
            assert len(slow.wait_for(1)) == 1
    finally:
        slow.stop()


def test_unreachable_callback_url_is_recorded_not_fatal(client, sandbox):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    sandbox.set_callback_url(f"http://127.0.0.1:{port}/callback")
    pay(client)
    sent = sandbox.wait_for_callbacks(1)
    assert sent[0]["error"] == "ConnectionError" and sent[0]["http_status"] is None
    assert len(pay(client)) == 32  # still serving


# --- outcome selection ----------------------------------------------------------------------------


def test_outcome_rules_match_any_msisdn_form(receiver):
    with running_sandbox(callback_url=receiver.url, outcomes={"255628630936": "failure"}) as sb:
        client = AzamPayClient(sb.azampay_config())
        pay(client, msisdn="0628630936")
        pay(client, msisdn="+255628630936")
        pay(client, msisdn="0758285812")  # no rule: default success
        pay(client, msisdn="0628630936", outcome="success")  # per request beats the rule
        statuses = sorted(
            (b["msisdn"], b["additionalProperties"].get("sandbox_outcome", ""), b["transactionstatus"])
            for b in receiver.wait_for(4)
        )
        assert statuses == [
            ("+255628630936", "", "failure"),
            ("0628630936", "", "failure"),
            ("0628630936", "success", "success"),
            ("0758285812", "", "success"),
        ]


def test_outcome_control_endpoint(client, sandbox, receiver):
    answer = requests.post(f"{sandbox.url}/_sandbox/outcomes", json={MSISDN: "duplicate"}, timeout=5)
    assert answer.status_code == 200
    assert requests.get(f"{sandbox.url}/_sandbox/outcomes", timeout=5).json()["rules"] == {"255628630936": "duplicate"}
    txn = pay(client)
    assert len(receiver.wait_for(2)) == 2
    assert requests.post(f"{sandbox.url}/_sandbox/outcomes", json={MSISDN: "bogus"}, timeout=5).status_code == 400
    listed = requests.get(f"{sandbox.url}/_sandbox/transactions", timeout=5).json()
    assert [(t["transaction_id"], t["outcome"]) for t in listed] == [(txn, "duplicate")]
    callbacks = requests.get(f"{sandbox.url}/_sandbox/callbacks", timeout=5).json()
    assert callbacks["count"] == 2 and callbacks["callbacks"][0]["payload"]["transid"] == txn


def test_unknown_per_request_outcome_is_a_400(client, sandbox):
    from pipeline.errors import AzamPayValidationError

    with pytest.raises(AzamPayValidationError) as caught:
        pay(client, "explode")
    assert "additionalProperties.sandbox_outcome" in caught.value.fields
    assert sandbox.transactions() == []


def test_every_outcome_is_accepted_by_checkout(client, sandbox):
    for outcome in OUTCOMES:
        pay(client, outcome)
    assert sorted(t["outcome"] for t in sandbox.transactions()) == sorted(OUTCOMES)


def test_seeding_one_or_many_transactions_over_http(client, sandbox):
    one = requests.post(
        f"{sandbox.url}/_sandbox/transactions",
        json={"externalId": "RHCI-DN-1-x", "msisdn": MSISDN, "outcome": "pending"},
        timeout=5,
    )
    many = requests.post(
        f"{sandbox.url}/_sandbox/transactions",
        json=[
            {"externalId": f"RHCI-DN-{i}-x", "msisdn": MSISDN, "provider": "Tigo", "outcome": outcome}
            for i, outcome in ((2, "failure"), (3, "success"))
        ],
        timeout=5,
    )
    assert one.status_code == many.status_code == 200
    seeded = [one.json(), *many.json()]
    assert [t["external_id"] for t in seeded] == ["RHCI-DN-1-x", "RHCI-DN-2-x", "RHCI-DN-3-x"]
    assert [client.transaction_status(t["transaction_id"], t["provider"]).status for t in seeded] == [
        "PENDING",
        "FAILED",
        "SUCCESS",
    ]
    assert sandbox.callback_count() == 0  # seeded, not checked out: no callback is ever sent


def test_status_text_can_be_changed_after_checkout(client, sandbox):
    txn = pay(client, "pending")
    assert client.transaction_status(txn, "Halopesa").status == "PENDING"
    answer = requests.post(
        f"{sandbox.url}/_sandbox/transactions/{txn}/status", json={"data": "Transaction successful."}, timeout=5
    )
    assert answer.status_code == 200
    assert client.transaction_status(txn, "Halopesa").status == "SUCCESS"


def test_status_with_another_provider_is_not_found(client):
    txn = pay(client)
    assert client.transaction_status(txn, "halopesa").status == "SUCCESS"  # case-insensitive
    assert client.transaction_status(txn, "Airtel").text == "Transaction not found."
