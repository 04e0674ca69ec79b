"""Running the app under uvicorn, in this process or in `--workers` processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from streamlearn.serve.config import ServeConfig, api_token

CONFIG_ENV = "STREAMLEARN_SERVE_CONFIG"
"""How the parent hands its settings to uvicorn's worker processes (JSON; never the token)."""


def run(config: ServeConfig, token: str | None, log_level: str = "info") -> None:
    """Serve until stopped (Ctrl-C / SIGTERM)."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common = {"host": config.host, "port": config.port, "log_level": log_level, "access_log": log_level in ("debug", "info"),
              "timeout_graceful_shutdown": 5}
    if config.workers == 1:
        from streamlearn.serve.app import create_app

        uvicorn.run(create_app(config, token), **common)
        return
    # Each worker process builds its own app (and backbone) from the settings in the environment;
    # the token stays in STREAMLEARN_API_TOKEN, which the workers inherit.
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
    uvicorn.run("streamlearn.serve.process:app_from_env", factory=True, workers=config.workers, **common)


def app_from_env():
    """The app of one `--workers` process, from `STREAMLEARN_SERVE_CONFIG`."""
    from streamlearn.serve.app import create_app

    fields = json.loads(os.environ[CONFIG_ENV])
    fields.update(pin=tuple(fields["pin"]), cors_origins=tuple(fields["cors_origins"]))
    config = ServeConfig(**fields)
    return create_app(config, api_token(config.host))
