import pytest

from echoseen.kask_body import BodyCodec, BodyFormat, Unreadable

SEEN = "20190523123456"

# The test vectors MediaWiki's RESTBagOStuff produces for the string 20190523123456.
VECTORS = [
    (BodyFormat.JSON, None, b'JSON.."20190523123456"'),
    (BodyFormat.PHP, None, b'PHP..s:14:"20190523123456";'),
    (BodyFormat.LEGACY, None, b's:14:"20190523123456";'),
    (BodyFormat.PHP, b"secret", b'PHP.I9uwUnFMeuV8QluYRc4wVGMG4kP1VZ4zzGZU0Toi+6w=.s:14:"20190523123456";'),
    (BodyFormat.JSON, b"secret", b'JSON.tO3dTti1VMtzpgfOcRJ6KszObI8GBPD0MQUCZLhrzzM=."20190523123456"'),
]


@pytest.mark.parametrize("body_format, key, body", VECTORS)
def test_encode_matches_vector(body_format, key, body):
    assert BodyCodec(body_format, key).encode(SEEN) == body


@pytest.mark.parametrize("body_format, key, body", VECTORS)
def test_decode_reads_vector(body_format, key, body):
    assert BodyCodec(body_format, key).decode(body).seen_time == SEEN


def test_decode_rejects_other_format():
    assert BodyCodec(BodyFormat.JSON).decode(b'PHP..s:14:"20190523123456";').unreadable is Unreadable.OTHER_FORMAT


def test_decode_rejects_bad_mac():
    body = BodyCodec(BodyFormat.JSON, b"other").encode(SEEN)
    assert BodyCodec(BodyFormat.JSON, b"secret").decode(body).unreadable is Unreadable.BAD_MAC


def test_decode_without_key_ignores_mac():
    body = BodyCodec(BodyFormat.JSON, b"secret").encode(SEEN)
    assert BodyCodec(BodyFormat.JSON).decode(body).seen_time == SEEN


@pytest.mark.parametrize("body, reason", [
    (b"JSON..not json", Unreadable.BAD_PAYLOAD),
    (b"JSON..12345", Unreadable.NOT_A_TIMESTAMP),
    (b'JSON.."2019"', Unreadable.NOT_A_TIMESTAMP),
    (b"JSON.", Unreadable.OTHER_FORMAT),
])
def test_decode_unreadable_json(body, reason):
    assert BodyCodec(BodyFormat.JSON).decode(body).unreadable is reason


def test_repr_masks_key():
    assert "secret" not in repr(BodyCodec(BodyFormat.JSON, b"secret"))
