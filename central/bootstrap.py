"""First-run set-up: the first admin and, for the demo, a city with a camera and an enrolment
token for its agent."""

from __future__ import annotations

from typing import Any

import asyncpg

from central import cameras, cities, enrolment, users
from central.db import create_pool

DEMO_CITY = ("Cidade Demonstração", "SP")


async def bootstrap(
    database_url: str,
    *,
    admin_email: str,
    admin_password: str,
    camera_url: str | None = None,
    enrolment_token: bool = False,
) -> dict[str, Any]:
    """Ensure the admin exists; with ``camera_url`` also the demo city and camera, and with
    ``enrolment_token`` a fresh one-time token for the city's agent. Idempotent otherwise."""
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            admin = await users.ensure_admin(conn, admin_email, admin_password)
            out: dict[str, Any] = {"admin_id": str(admin)}
            if camera_url:
                out |= await _demo(conn, camera_url)
                if enrolment_token:
                    token, _ = await enrolment.create_token(
                        conn, out["city_id"], "agente-demo", admin, 3600
                    )
                    out["enrolment_token"] = token
        return out
    finally:
        await pool.close()


async def _demo(conn: asyncpg.Connection, camera_url: str) -> dict[str, Any]:
    city = await conn.fetchval("SELECT id FROM cidades WHERE nome = $1 AND estado = $2", *DEMO_CITY)
    if city is None:
        city = await cities.create_city(conn, *DEMO_CITY, plano_retencao_dias=7)
    camera = await conn.fetchval(
        "SELECT id FROM cameras WHERE cidade_id = $1 AND url_rtsp = $2", city, camera_url
    )
    if camera is None:
        camera = await cameras.create_camera(
            conn, city, "Câmera de teste", camera_url, localizacao="Via simulada"
        )
    return {"city_id": city, "camera_id": camera}
