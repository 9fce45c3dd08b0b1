"""``gtvision-agent enroll``: exchange a one-time token from central for this agent's credentials.

The credentials (agent and city ids, API token, broker URL with the agent's own user) go to
``credentials.yaml`` beside the config file, mode 0600; ``load_config`` merges them in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.config import CREDENTIALS_FILE


class EnrolError(Exception):
    """Enrolment did not happen; the message says why and what to do."""


def credentials_path(config_path: Path) -> Path:
    return config_path.parent / CREDENTIALS_FILE


def enroll(central_url: str, token: str, config_path: Path, *, force: bool = False) -> Path:
    """Spend the token at central and write the credentials file. Returns its path.

    Refuses to overwrite existing credentials unless ``force`` (re-enrolling makes a new agent).
    """
    target = credentials_path(config_path)
    if target.exists() and not force:
        raise EnrolError(
            f"{target} exists: this agent is already enrolled (use --force to replace)"
        )
    url = central_url.rstrip("/")
    try:
        resp = httpx.post(f"{url}/api/agent/v1/enroll", json={"token": token}, timeout=30)
    except httpx.HTTPError as exc:
        raise EnrolError(f"cannot reach central at {url}: {exc}") from None
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text[:200]
        raise EnrolError(f"central refused the token: {detail} (HTTP {resp.status_code})")
    body: dict[str, Any] = resp.json()
    creds = {
        "agent_id": body["agent_id"],
        "city_id": body["city_id"],
        "central": {"api_url": url, "amqp_url": body["amqp_url"], "token": body["api_token"]},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    # 0600 from the first byte: the file holds the agent's secrets.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(creds, fh, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target
