"""Settings are a public contract: every one documented in .env.example, read with the prefix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reviewstream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"REVIEWSTREAM_([A-Z0-9_]+)=", (ROOT / ".env.example").read_text()))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented == fields


def test_contract_names_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "REVIEWSTREAM_REDIS_URL": "redis://example:6379/2",
        "REVIEWSTREAM_PROVIDER": "anthropic",
        "REVIEWSTREAM_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "REVIEWSTREAM_OPENAI_API_KEY": "sk-test",
        "REVIEWSTREAM_OPENAI_MODEL": "m1",
        "REVIEWSTREAM_ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "REVIEWSTREAM_ANTHROPIC_API_KEY": "ak-test",
        "REVIEWSTREAM_ANTHROPIC_MODEL": "m2",
        "REVIEWSTREAM_SIM_TOKENS_PER_SECOND": "12.5",
        "REVIEWSTREAM_SIM_FIRST_TOKEN_MS": "250",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.redis_url == "redis://example:6379/2" and s.provider == "anthropic"
    assert s.openai_base_url == "http://127.0.0.1:9/v1" and s.openai_model == "m1"
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-test"
    assert s.anthropic_api_key is not None and s.anthropic_api_key.get_secret_value() == "ak-test"
    assert (s.anthropic_base_url, s.anthropic_model) == ("http://127.0.0.1:9", "m2")
    assert (s.sim_tokens_per_second, s.sim_first_token_ms) == (12.5, 250)
    assert "sk-test" not in repr(s)


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REVIEWSTREAM_PROVIDER", raising=False)
    (tmp_path / ".env").write_text("REVIEWSTREAM_PROVIDER=openai\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().provider == "openai"


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVIEWSTREAM_PROVIDER", "gpt")
    with pytest.raises(ValueError, match="provider"):
        Settings(_env_file=None)  # type: ignore[call-arg]
