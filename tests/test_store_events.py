"""The log's raw write paths (pipeline.store.events) store exactly what SQLAlchemy's types would, on both backends."""

import json
from datetime import timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import insert

from pipeline.db import transaction
from pipeline.errors import StoreError
from pipeline.events import EventFields, extract_fields
from pipeline.models import PaymentEvent
from pipeline.store.driver import IN_CHUNK
from pipeline.store.events import KEPT_HEADERS, Claim, append_events, event_row, resolve_claims, select_headers
from tests.builders import add_donation, callback_body
from tests.conftest import fixture_bytes

EAST_AFRICA = timezone(timedelta(hours=3))
STORED_COLUMNS = [column.key for column in PaymentEvent.__table__.columns if column.key != "id"]


def _rows(now):
    body = fixture_bytes("callback_live_shape_success.json")
    return [
        # an aware time in another zone, money with cents, typed fields from a real body
        event_row(
            source="callback",
            body=body,
            received_at=now.astimezone(EAST_AFRICA),
            auth="verified",
            fields=extract_fields(body),
            content_type="application/json",
            remote_addr="127.0.0.1",
            headers='{"host":"x"}',
        ),
        event_row(
            source="poll",
            body=b'{"data":"Transaction successful."}',
            received_at=now + timedelta(microseconds=7),
            auth="n/a",
            fields=EventFields(status="SUCCESS", status_raw="Transaction successful.", amount=Decimal("1234.5")),
            donation_id=42,
        ),
        event_row(
            source="callback",
            body=b"not json",
            received_at=now,
            auth="failed",
            fields=EventFields(parse_error="bad JSON"),
        ),
    ]


def test_raw_append_stores_what_a_core_insert_stores(backend, now):
    rows = _rows(now)
    with transaction(backend.engine) as session:
        append_events(session, rows)
    with transaction(backend.engine) as session:
        session.connection().execute(insert(PaymentEvent.__table__), rows)
    stored = backend.rows(f"SELECT {', '.join(STORED_COLUMNS)} FROM payment_events ORDER BY id")
    raw, core = stored[:3], stored[3:]
    assert [tuple(row) for row in raw] == [tuple(row) for row in core]
    with transaction(backend.engine) as session:
        read_back = session.query(PaymentEvent).order_by(PaymentEvent.id).limit(3).all()
    assert read_back[0].received_at == now and read_back[0].received_at.tzinfo is not None
    assert read_back[1].amount == Decimal("1234.50") and read_back[1].donation_id == 42
    assert read_back[2].parse_error == "bad JSON" and read_back[2].body == b"not json"


def test_append_refuses_a_column_the_log_does_not_have(backend, now):
    row = dict(_rows(now)[2], colour="blue")
    with pytest.raises(StoreError, match="colour"):
        with transaction(backend.engine) as session:
            append_events(session, [row])
    assert backend.scalar("SELECT COUNT(*) FROM payment_events") == 0


def test_rows_with_other_keys_keep_their_order(backend, now):
    first, second, third = _rows(now)
    second = {key: value for key, value in second.items() if key != "headers"}
    with transaction(backend.engine) as session:
        append_events(session, [first, second, third])
    assert [row[0] for row in backend.rows("SELECT source FROM payment_events ORDER BY id")] == [
        "callback",
        "poll",
        "callback",
    ]
    assert backend.scalar("SELECT donation_id FROM payment_events WHERE source = 'poll'") == 42


def _claim(utilityref=None, hint=None, transaction_ref=None) -> Claim:
    return Claim.of(
        EventFields(
            utilityref=utilityref, donation_hint=None if hint is None else str(hint), transaction_ref=transaction_ref
        )
    )


def _known(session, claims) -> list[int | None]:
    return [resolution.donation_id for resolution in resolve_claims(session, claims)]


def test_claims_resolve_by_reference_id_and_transaction_exactly(backend, now):
    first_id, first_reference = add_donation(backend.engine, now, transaction_id="TX-ABC")
    second_id, second_reference = add_donation(backend.engine, now)
    claims = [
        _claim(first_reference),
        _claim(first_reference.lower()),  # MySQL's IN matches this one too; the answer must not
        _claim(hint=second_id),  # a hint alone, and nothing the callback states contradicts the donation
        _claim(transaction_ref="TX-ABC"),
        _claim(transaction_ref="tx-abc"),
        _claim("RHCI-DN-nobody", second_id + 1000, "TX-none"),
        _claim("RHCI-DN-nobody", second_id),  # the hint's donation has another reference: the facts disagree
    ]
    with transaction(backend.engine) as session:
        assert _known(session, claims) == [first_id, None, second_id, first_id, None, None, None]
        assert _known(session, [_claim()]) == [None]


def test_claims_resolve_past_one_in_list(backend, now):
    known_id, reference = add_donation(backend.engine, now)
    strangers = [_claim(f"RHCI-DN-stranger-{n}") for n in range(IN_CHUNK + 50)]
    claims = strangers[:IN_CHUNK] + [_claim(reference)] + strangers[IN_CHUNK:]
    with transaction(backend.engine) as session:
        found = _known(session, claims)
    assert found.count(known_id) == 1 and found[IN_CHUNK] == known_id
    # IN_CHUNK references fill the first query and the id is in the second
    by_id = strangers[:IN_CHUNK] + [Claim.of(EventFields(donation_hint=str(known_id)))]
    with transaction(backend.engine) as session:
        assert _known(session, by_id) == [None] * IN_CHUNK + [known_id]


def test_a_callback_body_names_its_donation_through_the_writer_lookup(backend, now):
    donation_id, reference = add_donation(backend.engine, now, transaction_id="TX-9")
    body = callback_body(reference, transaction_id="TX-9")
    with transaction(backend.engine) as session:
        assert _known(session, [Claim.of(extract_fields(body))]) == [donation_id]


@given(st.dictionaries(st.sampled_from(KEPT_HEADERS + ("cookie", "authorization", "x-other")), st.text(), max_size=10))
@example({"host": 'a"b\\é\n\u2028', "x-forwarded-for": "1.2.3.4, 5.6.7.8", "cookie": "session=1"})
@example({})
def test_selected_headers_are_what_json_dumps_writes(headers):
    kept = {name: value for name, value in headers.items() if name in KEPT_HEADERS}
    assert select_headers(headers) == json.dumps(kept, ensure_ascii=False, sort_keys=True)
