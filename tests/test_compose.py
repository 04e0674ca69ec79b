"""Structure checks of docker-compose.yml (no Docker engine runs here, so it is parsed, not started)."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    """The parsed compose file (YAML anchors and merge keys resolved)."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_has_the_services_of_the_scale_mode(compose):
    """Redis, PostgreSQL, a one-shot migrate, the worker, the server and Flower are all defined."""
    assert {"redis", "postgres", "migrate", "worker", "serve", "flower"} <= set(compose["services"])


def test_redis_and_postgres_have_healthchecks(compose):
    """Both services report health, with a real probe command."""
    redis = compose["services"]["redis"]["healthcheck"]["test"]
    postgres = compose["services"]["postgres"]["healthcheck"]["test"]
    assert "redis-cli" in redis and "ping" in redis
    assert "pg_isready" in " ".join(postgres)


def test_worker_reserves_a_gpu_and_is_scalable(compose):
    """The worker reserves one NVIDIA GPU and has no fixed container name or host port, so it scales."""
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:2] == ["streamlearn", "worker"]


def test_worker_waits_for_healthy_services_and_the_migration(compose):
    """The worker starts only after Redis and PostgreSQL are healthy and the schema is migrated."""
    depends = compose["services"]["worker"]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert compose["services"]["migrate"]["command"] == ["streamlearn", "db", "upgrade"]


def test_services_share_broker_catalogue_and_artifact_volume(compose):
    """Worker and migrate point at the compose Redis and PostgreSQL; workers share one artifact volume."""
    for name in ("worker", "migrate"):
        env = compose["services"][name]["environment"]
        assert env["STREAMLEARN_BROKER_URL"].startswith("redis://redis:6379")
        assert env["STREAMLEARN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["STREAMLEARN_DATABASE_URL"]
    assert compose["services"]["worker"]["environment"]["STREAMLEARN_DEVICE"] == "cuda"
    assert "artifacts:/data" in compose["services"]["worker"]["volumes"]
    assert "artifacts" in compose["volumes"]
    assert "redis://redis:6379" in " ".join(compose["services"]["flower"]["command"])


def test_worker_image_is_built_from_the_workers_dockerfile(compose):
    """The worker's image is built from workers/Dockerfile, which installs the pinned torch and the package."""
    build = compose["services"]["worker"]["build"]
    assert build["dockerfile"] == "workers/Dockerfile"
    dockerfile = (ROOT / build["dockerfile"]).read_text(encoding="utf-8")
    assert "torch==2.13.0" in dockerfile and "pip install ." in dockerfile
    assert 'CMD ["streamlearn", "worker"]' in dockerfile


def test_serve_shares_the_catalogue_and_store_and_needs_a_token_beyond_loopback(compose):
    """The serve service reads the compose catalogue and artifact volume, binds 0.0.0.0 with a required token, and publishes on loopback only."""
    serve = compose["services"]["serve"]
    assert serve["command"][:2] == ["streamlearn", "serve"] and "0.0.0.0" in serve["command"]
    env = serve["environment"]
    assert "@postgres:5432/" in env["STREAMLEARN_DATABASE_URL"] and env["STREAMLEARN_ARTIFACTS"] == "/data/artifacts"
    assert env["STREAMLEARN_API_TOKEN"] == "${STREAMLEARN_API_TOKEN:-}"
    assert "artifacts:/data" in serve["volumes"]
    assert serve["ports"] == ["127.0.0.1:8000:8000"]
    assert serve["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/v2/health/ready" in " ".join(serve["healthcheck"]["test"])
