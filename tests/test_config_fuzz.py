"""Fuzzing the config: any YAML document and any key=value override either loads into a valid
``Config`` or raises ``ConfigError`` (one line naming the file or key), never another exception."""

import dataclasses
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpstream.config import Config, load_config
from dpstream.errors import ConfigError

KEYS = [field.name for field in dataclasses.fields(Config)] + ["epsilon", "delta", "mechanism", "no_such_key"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["high", "normal", "dp", "blur", "laplace", "gaussian", "libx264", "1e-5", "-1", "nan"]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
documents = st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), values)


def assert_loads_or_config_error(load) -> None:
    try:
        config = load()
    except ConfigError as error:
        assert "\n" not in str(error) and str(error)
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_yaml_document_loads_or_is_a_config_error(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        assert_loads_or_config_error(lambda: load_config(path))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_as_a_config_file_load_or_are_a_config_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(data)
        assert_loads_or_config_error(lambda: load_config(path))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
def test_any_overrides_load_or_are_a_config_error(overrides):
    assert_loads_or_config_error(lambda: load_config(None, **overrides))
