"""The one Centrifugo setting of the suite's server that is not a livegate config key:
``client.subscribe_to_user_personal_channel.enabled = true`` (docker-compose.yml's
CENTRIFUGO_CLIENT_SUBSCRIBE_TO_USER_PERSONAL_CHANNEL_ENABLED). Centrifugo then subscribes every
connection with a user, server-side, to the user's personal channel: ``#<user>`` with the
default (empty) personal_channel_namespace. livegate's connect hook does the same here.
"""

from __future__ import annotations

from typing import Any

from livegate import App

app = App()


@app.on_connect
async def personal_channel(ctx: Any, data: Any) -> dict[str, Any] | None:
    if not ctx.user:
        return None  # Centrifugo subscribes only connections with a user
    return {"channels": [f"#{ctx.user}"]}
