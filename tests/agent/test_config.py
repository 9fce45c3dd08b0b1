"""Agent config: strict validation, errors that name the key path, credentials kept secret."""

import uuid
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import ConfigError, parse_config

CAMERA_ID = str(uuid.uuid4())


def config_dict(**camera: object) -> dict[str, object]:
    cam: dict[str, object] = {"id": CAMERA_ID, "name": "Portão 1", "url": "rtsp://10.0.0.5/s1"}
    cam.update(camera)
    return {
        "agent_id": str(uuid.uuid4()),
        "city_id": str(uuid.uuid4()),
        "data_dir": "/var/lib/gtvision-agent",
        "central": {
            "api_url": "http://central:8080",
            "amqp_url": "amqp://agent:s3cret-amqp@central:5672/",
            "token": "tok-very-secret",
        },
        "cameras": {"gate_1": cam},
    }


def test_valid_config_and_defaults() -> None:
    cfg = parse_config(yaml.safe_dump(config_dict()))
    cam = cfg.cameras["gate_1"]
    assert cam.record.segment_seconds == 10
    assert cam.transport == "tcp"
    assert cam.source_url() == "rtsp://10.0.0.5/s1"


def test_error_names_key_path_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(config_dict(record={"segment_seconds": 90})))
    assert "cameras -> gate_1 -> record -> segment_seconds" in str(err.value)
    assert "90" in str(err.value)


def test_unknown_key_rejected() -> None:
    with pytest.raises(ConfigError, match="cameras -> gate_1 -> fps"):
        parse_config(yaml.safe_dump(config_dict(fps=5)))


def test_credentials_in_url_rejected_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(config_dict(url="rtsp://admin:hunter2@10.0.0.5/s1")))
    assert "username/password" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_secret_fields_not_echoed_on_error() -> None:
    data = config_dict()
    data["central"] = {"api_url": "x", "amqp_url": ["not-a-string-secret"], "token": 5}
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(data))
    assert "not-a-string-secret" not in str(err.value)


def test_credentials_encoded_in_source_url_only() -> None:
    cfg = parse_config(yaml.safe_dump(config_dict(username="admin", password="p@ss:w/rd")))
    cam = cfg.cameras["gate_1"]
    assert cam.source_url() == "rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.5/s1"
    assert "p@ss" not in repr(cfg)


def test_not_yaml_and_not_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("cameras: [unclosed")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config("- a list")


def test_duplicate_camera_ids() -> None:
    data = config_dict()
    data["cameras"]["gate_2"] = dict(data["cameras"]["gate_1"])  # type: ignore[index]
    with pytest.raises(ConfigError, match="same id"):
        parse_config(yaml.safe_dump(data))


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config_dict()))
    assert main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config_dict(transport="carrier-pigeon")))
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "cameras -> gate_1 -> transport" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_quarantine_camera_name_is_reserved() -> None:
    data = config_dict()
    data["cameras"] = {"quarantine": data["cameras"]["gate_1"]}  # type: ignore[index]
    with pytest.raises(ConfigError, match="reserved"):
        parse_config(yaml.safe_dump(data))


def test_yaml_error_does_not_quote_the_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("cameras:\n  a:\n    password: hunter2: [\n")
    assert "hunter2" not in str(err.value)
    assert "line 3" in str(err.value)


def test_credentials_file_merges_and_conflicts(tmp_path: Path) -> None:
    full = config_dict()
    creds = {"agent_id": full.pop("agent_id"), "city_id": full.pop("city_id"),
             "central": full.pop("central")}  # fmt: skip
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(full))
    (tmp_path / "credentials.yaml").write_text(yaml.safe_dump(creds))
    from agent.config import load_config

    cfg = load_config(tmp_path / "agent.yaml")
    assert str(cfg.agent_id) == creds["agent_id"]
    full["agent_id"] = str(uuid.uuid4())
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match="agent_id is set in both"):
        load_config(tmp_path / "agent.yaml")
