"""PrivacyConfig: defaults are valid, bad values raise ConfigError naming the key."""

import pytest

from dpstream.errors import ConfigError
from dpstream.privacy import PrivacyConfig


def test_defaults_are_valid():
    config = PrivacyConfig()
    assert config.mechanism == "gaussian" and 0 < config.epsilon <= 8 and 0 < config.delta < 1


@pytest.mark.parametrize(
    "key, value",
    [
        ("mechanism", "exponential"),
        ("epsilon", 0),
        ("epsilon", -1),
        ("epsilon", float("nan")),
        ("epsilon", float("inf")),
        ("epsilon", True),
        ("epsilon", "4"),
        ("delta", 0),
        ("delta", 1),
        ("delta", 1.5),
        ("delta", "1e-5"),
        ("clip_norm", 0),
        ("clip_norm", -2.0),
        ("reassociation_threshold", 1.5),
        ("reassociation_ttl", -1),
        ("max_people", 0),
        ("max_people", 2.5),
        ("max_people", True),
    ],
)
def test_bad_value_names_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: must be .*got"):
        PrivacyConfig(**{key: value})


def test_message_is_clear():
    with pytest.raises(ConfigError) as error:
        PrivacyConfig(epsilon=-1)
    assert str(error.value) == "epsilon: must be a number > 0, got -1"
    with pytest.raises(ConfigError, match="YAML reads 1e-5 as text"):
        PrivacyConfig(delta="1e-5")


def test_valid_edge_values():
    PrivacyConfig(mechanism="laplace", epsilon=20, delta=0.5, clip_norm=1, reassociation_ttl=0, max_people=1)
    PrivacyConfig(reassociation_threshold=-1.0)
    PrivacyConfig(reassociation_threshold=1.0)
