"""Config of the custody credentials (issue 10): ``upstreams.X.aws`` and
``upstreams.X.google_credentials`` are checked strictly, and a missing optional extra is
named with the command that installs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from spendgate.config import parse_config
from spendgate.errors import ConfigError
from tests.conftest import spendgate_command

AWS = {"region": "us-east-1", "access_key_id": "AKIAPROXY", "secret_access_key": "s3cret"}


@pytest.mark.parametrize(("upstream", "problem"), [
    ({"provider": "openai", "aws": AWS}, "aws: only for provider: bedrock"),
    ({"provider": "bedrock", "aws": {"region": "us-east-1", "access_key_id": "AKIA"}},
     "access_key_id and secret_access_key go together"),
    ({"provider": "bedrock", "aws": {"access_key_id": "AKIA"}}, "upstreams.b.aws.region: required"),
    ({"provider": "anthropic", "google_credentials": "/sa.json"},
     "google_credentials: only for provider: gemini"),
    ({"provider": "bedrock", "aws": AWS, "api_key": "k"}, "api_key: not with aws"),
    ({"provider": "vertex"}, "upstreams.b.provider: Input should be"),
])
def test_custody_config_is_strict(upstream: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"upstreams": {"b": {"url": "https://example.com", **upstream}}})
    assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_new_protocols_parse() -> None:
    config = parse_config({"upstreams": {
        "bedrock": {"url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                    "provider": "bedrock", "aws": {"region": "us-east-1"}},
        "vertex": {"url": "https://us-central1-aiplatform.googleapis.com", "provider": "gemini",
                   "google_credentials": "${UNSET_SA_FILE:-}"}}}, environ={})
    assert config.upstreams["bedrock"].aws is not None
    assert config.upstreams["vertex"].google_credentials is None  # empty: the caller's token


@pytest.mark.parametrize(("blocked", "upstream", "extra"), [
    ("botocore", {"provider": "bedrock", "aws": AWS}, "bedrock"),
    ("google/oauth2", {"provider": "gemini", "google_credentials": "/nonexistent.json"},
     "vertex"),
])
def test_a_missing_extra_is_named(tmp_path: Path, blocked: str, upstream: dict[str, object],
                                  extra: str) -> None:
    shadow = tmp_path / "shadow" / blocked
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    config = tmp_path / "spendgate.yaml"
    config.write_text(yaml.safe_dump({"upstreams": {"cloud": {"url": "https://example.com",
                                                              **upstream}}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])}
    for args in (["check-config", str(config)], ["serve", "--config", str(config),
                                                 "--port", "0"]):
        done = subprocess.run(spendgate_command(*args), env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1
        assert (f"upstreams.cloud.{'aws' if extra == 'bedrock' else 'google_credentials'}: "
                f"needs the '{extra}' extra: pip install 'spendgate[{extra}]'") in (
            done.stdout + done.stderr)
