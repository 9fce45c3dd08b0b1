"""First-run set-up: the first admin user and, for the demo, a city with an agent and a camera."""

from __future__ import annotations

from typing import Any

import asyncpg

from central import agents, cameras, cities, users
from central.db import create_pool

DEMO_CITY = ("Cidade Demonstração", "SP")


async def bootstrap(
    database_url: str,
    *,
    admin_email: str,
    admin_password: str,
    camera_url: str | None = None,
    agent_token: str | None = None,
) -> dict[str, Any]:
    """Ensure the admin exists; with ``camera_url`` also the demo city, agent and camera.

    Idempotent. Only a token's hash is stored, so the demo agent's token is set to
    ``agent_token`` when given, else rotated to a fresh one, and returned.
    """
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            out: dict[str, Any] = {
                "admin_id": str(await users.ensure_admin(conn, admin_email, admin_password))
            }
            if camera_url:
                out |= await _demo(conn, camera_url, agent_token)
        return out
    finally:
        await pool.close()


async def _demo(
    conn: asyncpg.Connection, camera_url: str, agent_token: str | None
) -> dict[str, Any]:
    city = await conn.fetchval("SELECT id FROM cidades WHERE nome = $1 AND estado = $2", *DEMO_CITY)
    if city is None:
        city = await cities.create_city(conn, *DEMO_CITY, plano_retencao_dias=7)
    agent = await conn.fetchval("SELECT id FROM agents WHERE cidade_id = $1 LIMIT 1", city)
    if agent is None:
        agent, token = await agents.create_agent(conn, city, "agente-demo", agent_token)
    else:
        token = await agents.rotate_token(conn, agent, agent_token)
    camera = await conn.fetchval(
        "SELECT id FROM cameras WHERE cidade_id = $1 AND url_rtsp = $2", city, camera_url
    )
    if camera is None:
        camera = await cameras.create_camera(
            conn, city, "Câmera de teste", camera_url, agent_id=agent, localizacao="Via simulada"
        )
    return {"city_id": str(city), "agent_id": str(agent), "agent_token": token,
            "camera_id": str(camera)}  # fmt: skip
