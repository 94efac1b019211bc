import pytest

from echoseen import echo_value
from echoseen.echo_value import BadValue


def test_decode_mediawiki_value():
    decoded = echo_value.decode(b's:14:"20190523123456";')
    assert decoded.seen_time == "20190523123456"
    assert decoded.error is None
    assert not decoded.is_placeholder


def test_decode_placeholder():
    assert echo_value.decode(b's:14:"19700101000001";').is_placeholder


@pytest.mark.parametrize("value, reason", [
    (b"", BadValue.EMPTY),
    (b"20190523123456", BadValue.NOT_PHP_SERIALIZED),
    (b's:14:"20190523123456"', BadValue.NOT_PHP_SERIALIZED),
    (b's:14:"2019052312345', BadValue.NOT_PHP_SERIALIZED),
    (b's:13:"20190523123456";', BadValue.WRONG_LENGTH_PREFIX),
    (b's:14:"2019052312345x";', BadValue.NOT_A_TIMESTAMP),
    (b's:14:"20191323123456";', BadValue.NOT_A_TIMESTAMP),
    (b's:3:"abc";', BadValue.NOT_A_TIMESTAMP),
    (b"i:20190523123456;", BadValue.NOT_PHP_SERIALIZED),
    (b's:2:"\xff\xfe";', BadValue.NOT_UTF8),
    (b"x" * 2000, BadValue.TOO_LARGE),
])
def test_decode_bad_values(value, reason):
    decoded = echo_value.decode(value)
    assert decoded.seen_time is None
    assert decoded.error is reason


def test_encode_round_trip():
    assert echo_value.encode("20190523123456") == b's:14:"20190523123456";'
    assert len(echo_value.encode("20190523123456")) == echo_value.SERIALIZED_LENGTH


def test_encode_rejects_invalid_timestamp():
    with pytest.raises(ValueError, match="invalid TS_MW"):
        echo_value.encode("2019-05-23")


def test_epoch_conversions():
    assert echo_value.ts_mw_from_epoch_us(1_558_614_896_999_999) == "20190523123456"
    assert echo_value.epoch_s_from_ts_mw("20190523123456") == 1_558_614_896
