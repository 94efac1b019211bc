import json

import jsonschema
import pytest

from echoseen import events
from echoseen.events import EventError, SeenTimeEvent, UnsupportedSchemaVersion


def make_event(**overrides) -> SeenTimeEvent:
    fields = dict(op="upsert", key=b"enwiki:echo:seen:alert:time:1", value=b's:14:"20190523123456";',
                  seen_time="20190523123456", value_error=None, expire_at_ms=1_700_000_000_000,
                  version_us=1_700_000_000_000_000, origin="live", notification="set",
                  source_server="127.0.0.1:6379", source_db=0, source_run_id="abc")
    fields.update(overrides)
    return SeenTimeEvent(**fields)


@pytest.mark.parametrize("event", [
    make_event(),
    make_event(op="delete", value=None, seen_time=None, expire_at_ms=None, notification="del"),
    make_event(value=b"garbage", seen_time=None, value_error="not_php_serialized", origin="catchup",
               notification=None),
    make_event(key="dewiki:echo:seen:message:time:ü 5".encode(), origin="snapshot", notification=None),
])
def test_encoded_event_passes_reference_validator(event):
    key, value = events.encode(event)
    jsonschema.validate(json.loads(value), events.load_schema())
    assert events.decode(key, value) == event


@pytest.mark.parametrize("event", [
    make_event(),
    make_event(key='x:"quoted"\\:\n'.encode(), notification=None, expire_at_ms=None),
    make_event(op="delete", value=None, seen_time=None, expire_at_ms=None, notification="del"),
])
def test_encode_equals_dict_form(event):
    _, value = events.encode(event)
    assert json.loads(value) == event.to_json_dict()


@pytest.mark.parametrize("event", [
    make_event(origin="snapshot", notification=None),
    make_event(key='x:"quoted"\\:\n ü'.encode(), expire_at_ms=None),
    make_event(key=b"enwiki:echo:seen:alert:time:\xff", source_server='odd "host" %s:6379', source_db=3,
               source_run_id="run\\id", origin="catchup", notification=None),
])
def test_upsert_encoder_matches_encode(event):
    encoder = events.UpsertEncoder(event.origin, event.notification, event.source_server, event.source_db,
                                   event.source_run_id)

    value = encoder.encode(event.key, event.value, event.seen_time, event.expire_at_ms, event.version_us)

    assert value == events.encode(event)[1]
    assert events.decode(event.key, value) == event


def test_non_utf8_key_escaped_in_text():
    event = make_event(key=b"enwiki:echo:seen:alert:time:\xff")
    key, value = events.encode(event)
    assert json.loads(value)["key"] == "enwiki:echo:seen:alert:time:\\xff"
    assert events.decode(key, value).key == b"enwiki:echo:seen:alert:time:\xff"


@pytest.mark.parametrize("record_value, reason", [
    (b"not json", "invalid_json"),
    (None, "invalid_json"),
    (b"[1, 2]", "schema_violation"),
    (b'{"schema_version": 1}', "schema_violation"),
])
def test_decode_rejects_invalid_records(record_value, reason):
    with pytest.raises(EventError) as caught:
        events.decode(b"k", record_value)
    assert caught.value.reason == reason


def test_decode_rejects_key_mismatch():
    _, value = events.encode(make_event())
    with pytest.raises(EventError, match="differs from the event key"):
        events.decode(b"other", value)


def test_decode_rejects_delete_with_value():
    document = make_event(op="delete", notification="del").to_json_dict()
    with pytest.raises(EventError):
        events.decode(b"enwiki:echo:seen:alert:time:1", json.dumps(document).encode())


def test_newer_schema_version_is_not_a_schema_violation():
    document = make_event().to_json_dict()
    document["schema_version"] = 2
    document["new_field"] = "x"
    with pytest.raises(UnsupportedSchemaVersion) as caught:
        events.decode(b"enwiki:echo:seen:alert:time:1", json.dumps(document).encode())
    assert caught.value.version == 2


def test_explicit_deletes():
    for notification in ("del", "unlink", "rename_from", "move_from"):
        assert make_event(op="delete", value=None, seen_time=None, notification=notification).is_explicit_delete
    for notification in ("expired", "evicted"):
        assert not make_event(op="delete", value=None, seen_time=None, notification=notification).is_explicit_delete
