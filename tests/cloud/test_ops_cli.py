"""The operator commands: key generation, tokens, signed publishing, roll-back, safe serve defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.auth import TokenAuthority
from dcrec.device.updates import load_trusted_keys, verify
from dcrec.shared.cli import main


def test_keygen_token_publish_rollback(tmp_path: Path, device_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    secret, keys = tmp_path / "secret", tmp_path / "keys"
    assert main(["cloud", "keygen", "--auth-secret", str(secret), "--signing-dir", str(keys)]) == 0
    assert (secret.stat().st_mode & 0o777) == 0o600 and (keys / "signing.pem").is_file()
    assert main(["cloud", "keygen", "--auth-secret", str(secret)]) != 0  # never overwrites a key
    capsys.readouterr()
    assert main(["cloud", "token", "--auth-secret", str(secret), "--device-id", "dev-9",
                 "--ttl", "2h"]) == 0
    token = capsys.readouterr().out.strip()
    ident = TokenAuthority.from_file(secret).verify(token, "device")
    assert ident.subject == "dev-9"
    reg = tmp_path / "reg"
    model = str(device_model_dir / "model.onnx")
    cfg = str(device_model_dir / "model.json")
    for v in ("a", "b"):
        assert main(["cloud", "publish", "--registry", str(reg), "--model", model, "--config", cfg,
                     "--version", v, "--signing-key", str(keys / "signing.pem")]) == 0
    assert main(["cloud", "models", "rollback", "--registry", str(reg),
                 "--signing-key", str(keys / "signing.pem")]) == 0
    live = ModelRegistry(reg).current()
    assert live is not None and (live.version, live.sequence) == ("a", 3)
    trusted = load_trusted_keys([keys / "signing.pub.pem"])
    assert verify(live, trusted, installed_sequence=2)["max_len"] == json.loads(
        Path(cfg).read_text())["max_len"]


def test_serve_refuses_plaintext_unless_asked(cloud_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["cloud", "serve", "--model-dir", str(cloud_model_dir), "--address", "127.0.0.1:0"])
    assert code == 2 and "--insecure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cloud", "token", "--auth-secret", "x", "--device-id", "d", "--ttl"])
