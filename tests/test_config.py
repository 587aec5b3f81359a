from pathlib import Path

import pytest

from dpstream.config import Config, load_config
from dpstream.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_documents_exactly_the_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == Config()


def test_every_key_of_the_config_is_documented_in_default_yaml():
    text = (REPO / "configs" / "default.yaml").read_text()
    for key in Config.__dataclass_fields__:
        assert f"\n{key}:" in text, key


def test_cli_style_strings_are_parsed_and_override_the_file(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("epsilon: 2\nmethod: blur\n")
    config = load_config(config_file, epsilon="0.5", crf="23")
    assert (config.epsilon, config.method, config.crf) == (0.5, "blur", 23)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epsilon: 0\n", "epsilon: must be a number > 0"),
        ("epsilon: -1\n", "epsilon: must be a number > 0"),
        ("epsilon: .nan\n", "epsilon: must be a number > 0, got nan"),
        ("epsilon: lots\n", "epsilon: must be a number, got 'lots'"),
        ("delta: 1.5\n", "delta: must be a number in (0, 1)"),
        ("clip_norm: 0\n", "clip_norm: must be a number > 0"),
        ("method: swirl\n", "method: must be one of dp, blur, mosaic, solid, dp-pix"),
        ("detect_tiles: [0]\n", "detect_tiles: must be a list of integers 1..8"),
        ("epsilonn: 4\n", "unknown key 'epsilonn'"),
        ("epsilon: [1, 2\n", "not valid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_config_files_name_the_file_and_the_key(tmp_path, text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(config_file)
    assert message in str(error.value)
    assert str(config_file) in str(error.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
