from omegaconf import OmegaConf

from charlit.loggers import plain_config, redact, wandb_mode


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
