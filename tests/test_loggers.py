import pytest
from omegaconf import OmegaConf

from charlit.loggers import has_secret_value, is_secret_key, plain_config, redact, redact_text, wandb_mode


def test_redact_hides_credentials_at_any_depth():
    cfg = OmegaConf.create(
        {
            "judge": {"api_key": "sk-123", "model": "m"},
            "hub_token": "hf_x",
            "lr": 1e-3,
            "items": [{"password": "p"}],
            "empty_token": None,
        }
    )
    out = plain_config(cfg)
    assert out["judge"] == {"api_key": "<redacted>", "model": "m"}
    assert out["hub_token"] == "<redacted>" and out["lr"] == 1e-3
    assert out["items"] == [{"password": "<redacted>"}] and out["empty_token"] is None
    assert "sk-123" not in str(out) and "hf_x" not in str(out)
    assert redact({"x": 1}) == {"x": 1}


def test_wandb_offline_without_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"


SECRET_KEYS = ["api_key", "apiKey", "API_KEY", "hf_token", "wandb_token", "auth_token", "token", "password"]
SECRET_KEYS += ["client_secret", "authorization", "credentials", "secret_key", "private_key"]
PLAIN_KEYS = ["max_new_tokens", "max_tokens", "min_tokens", "tokenizer", "teacher_tokenizer", "api_key_env"]
PLAIN_KEYS += ["pad_token", "eos_token", "n_tokens", "token_file", "key", "tokens"]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_credential_keys_are_secret(key):
    assert is_secret_key(key)
    assert redact({key: "x"}) == {key: "<redacted>"}


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_keys_that_merely_contain_token_or_key_stay_visible(key):
    assert not is_secret_key(key)
    assert redact({key: "x"}) == {key: "x"}


def test_a_tokenizer_dir_and_token_limits_survive_into_the_logged_config():
    cfg = OmegaConf.create(
        {"model": {"tokenizer": "/models/tok"}, "generation": {"max_new_tokens": 16, "min_tokens": 2}}
    )
    assert plain_config(cfg) == OmegaConf.to_container(cfg)


def test_url_credentials_and_key_shaped_values_are_redacted_under_any_key():
    key = "sk-" + "a1B2" * 10
    out = redact(
        {
            "base_url": "https://user:secretpw@judge.example.com/v1",
            "model": key,
            "notes": [f"Authorization: Bearer {key}", "https://judge.example.com/v1"],
        }
    )
    assert out["base_url"] == "https://<redacted>@judge.example.com/v1"
    assert out["model"] == "<redacted>" and "secretpw" not in str(out) and key not in str(out)
    assert out["notes"][1] == "https://judge.example.com/v1"


@pytest.mark.parametrize("text", ["sk-learn-experiment-2024-01-01", "hf_tiny_model", "basic questions answered"])
def test_ordinary_values_that_start_like_keys_are_kept(text):
    assert not has_secret_value(text) and redact_text(text) == text
