"""Fuzz the API from its own OpenAPI document (schemathesis): no input may cause a server error.

Bounded for CI: a fixed seed and a few examples per operation; run by hand with more
(`schemathesis run URL/openapi.json --max-examples 500 -H "Authorization: Bearer ..."`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.central.test_api_scoping import PASSWORD, world
from tests.central_fixtures import CentralProcess

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.timeout(300)
async def test_no_input_causes_a_server_error(
    central_api: CentralProcess, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await world(db_pool)  # data to find: two cities, their cameras and agents
    headers = await central_api.login("admin@example.com", PASSWORD)
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "run", f"{central_api.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", "25", "--seed", "20261129",
        "-H", headers["Authorization"].join(("Authorization: ", "")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # it keeps a cache folder in the working directory
    )  # fmt: skip
    out, _ = await proc.communicate()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-4000:]
    assert "Tested:" in report  # it really ran operations
