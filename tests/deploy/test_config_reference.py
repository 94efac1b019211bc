"""docs/configuration.md is the generated page, and the page's example configuration loads."""

from __future__ import annotations

from pathlib import Path

from echoseen import config as config_module
from echoseen import config_docs

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reference_up_to_date():
    assert REFERENCE_PATH.read_text() == config_docs.render(), (
        "docs/configuration.md differs from the settings; regenerate it with "
        "`python -m echoseen.config_docs --write docs/configuration.md`")


def test_reference_lists_every_setting():
    page = REFERENCE_PATH.read_text()
    for section, name, *_ in config_module.describe_sections():
        assert f"`{config_module.env_name(section, name)}`" in page


def test_reference_example_loads(tmp_path):
    path = tmp_path / "example.toml"
    path.write_text(config_docs.EXAMPLE_TOML)
    config = config_module.load(path, environ={})
    assert config.kafka.client["security.protocol"] == "SASL_SSL"
    assert len(config.redis.servers) == 2


def test_reference_check_option(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    assert config_docs.main(["--check", str(stale)]) == 1
    assert config_docs.main(["--check", str(REFERENCE_PATH)]) == 0
