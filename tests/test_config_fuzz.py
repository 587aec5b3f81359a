"""Fuzzing the config and the command line: any YAML document, key=value override or option list
either loads into a valid ``Config`` or gives one error line naming the file or key (argparse:
its usage message), never another exception."""

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpstream import cli
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


OPTIONS = ["--method", "--epsilon", "--delta", "--detector-recall", "--config", "--model", "--ledger", "--codec",
           "--crf", "--preset", "--overwrite", "-q", "--link-people", "-o"]  # fmt: skip
tokens = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(["dp", "blur", "1", "-3", "nan", "1e9", "high", "x", ""]), st.text(max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=st.lists(tokens, max_size=8))
def test_any_command_line_gives_an_exit_code_and_no_traceback(tmp_path_factory, arguments):
    """``dpstream anonymize`` with any options, on an input that does not exist: the run stops
    with a usage error (argparse: exit 2) or one line naming the key or the file, never another
    exception (the missing input keeps any valid combination from running the pipeline)."""
    missing = str(tmp_path_factory.getbasetemp() / "missing.mp4")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = cli.main(["anonymize", missing, "-o", str(tmp_path_factory.getbasetemp() / "out.mp4"), *arguments])
    except SystemExit as exit:  # argparse's own usage errors
        assert exit.code == 2
        return
    assert code == cli.EXIT_USAGE, stderr.getvalue()
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpstream: error: "), lines
