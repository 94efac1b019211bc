import pytest

from echoseen import config as config_module
from echoseen.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "echoseen.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = config_module.load(None, environ={})
    assert config.kask.body_format == "JSON"
    assert config.redis.key_patterns == config_module.ECHO_KEY_PATTERNS


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[capture]\nread_batch_size = 10\n")
    config = config_module.load(path, environ={"ECHOSEEN_CAPTURE_READ_BATCH_SIZE": "20",
                                               "ECHOSEEN_REDIS_SERVERS": "redis://a:1/0,redis://b:2/3"})
    assert config.capture.read_batch_size == 20
    assert config.redis.servers == ("redis://a:1/0", "redis://b:2/3")


def test_unknown_setting_rejected(tmp_path):
    path = write(tmp_path, "[capture]\nread_batch_sise = 10\n")
    with pytest.raises(ConfigError, match="unknown setting 'read_batch_sise' in \\[capture\\]"):
        config_module.load(path, environ={})


def test_unknown_section_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown section \\[kafak\\]"):
        config_module.load(write(tmp_path, "[kafak]\n"), environ={})


def test_unknown_environment_variable_rejected():
    with pytest.raises(ConfigError, match="ECHOSEEN_KASK_URLL"):
        config_module.load(None, environ={"ECHOSEEN_KASK_URLL": "http://x/"})


def test_wrong_type_names_setting(tmp_path):
    with pytest.raises(ConfigError, match="\\[replicator\\] max_in_flight"):
        config_module.load(write(tmp_path, '[replicator]\nmax_in_flight = "many"\n'), environ={})


def test_invalid_body_format_names_fix(tmp_path):
    with pytest.raises(ConfigError, match="use JSON, PHP or legacy"):
        config_module.load(write(tmp_path, '[kask]\nbody_format = "XML"\n'), environ={})


def test_secrets_masked(tmp_path):
    secret_file = tmp_path / "hmac"
    secret_file.write_text("topsecret\n")
    path = write(tmp_path, f'[kask]\nhmac_key_file = "{secret_file}"\n'
                                                      '[kafka]\nclient = { "sasl.password" = "kafkapw" }\n')
    config = config_module.load(path, environ={"ECHOSEEN_REDIS_PASSWORD": "redispw"})
    assert config.kask_hmac_key().reveal() == "topsecret"
    assert config.redis_password().reveal() == "redispw"
    summary = config.summary()
    for secret in ("topsecret", "kafkapw", "redispw"):
        assert secret not in summary
        assert secret not in repr(config)
    assert "topsecret" not in repr(config.kask_hmac_key())


def test_missing_secret_file_names_setting(tmp_path):
    path = write(tmp_path, '[kask]\nhmac_key_file = "/nonexistent/hmac"\n')
    config = config_module.load(path, environ={})
    with pytest.raises(ConfigError, match="kask.hmac_key_file"):
        config.kask_hmac_key()


def test_password_in_redis_url_rejected(tmp_path):
    path = write(tmp_path, '[redis]\nservers = ["redis://:pw123@127.0.0.1:6379/0"]\n')
    with pytest.raises(ConfigError, match="contains a password") as caught:
        config_module.load(path, environ={})
    assert "pw123" not in str(caught.value)


def test_to_toml_round_trip(tmp_path):
    path = write(tmp_path, '[kafka]\nclient = { "security.protocol" = "SSL" }\n[capture]\nread_batch_size = 7\n')
    config = config_module.load(path, environ={})
    again = config_module.load(write(tmp_path, config_module.to_toml(config)), environ={})
    assert again.masked() == config.masked()
