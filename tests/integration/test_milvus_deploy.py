"""deploy/: the Compose file parses and wires Qiao to Milvus with real settings (Docker is not
available here, so this is what can be checked without running it)."""

from __future__ import annotations

from urllib.parse import urlparse

import yaml

from qiao.settings import PROJECT_ROOT, Settings

DEPLOY = PROJECT_ROOT / "deploy"


def test_compose_wires_qiao_to_milvus_standalone():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"etcd", "minio", "standalone", "qiao"} <= set(services)
    qiao = services["qiao"]
    env = qiao["environment"]
    # every QIAO_ variable is a real setting (a typo would be silently ignored by pydantic-settings)
    fields = {f"QIAO_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("QIAO_")} <= fields
    settings = Settings(**{k[5:].lower(): v for k, v in env.items() if k.startswith("QIAO_")})
    assert settings.backend == "milvus"
    uri = urlparse(settings.milvus_uri)
    assert uri.hostname in services and str(uri.port) in str(services[uri.hostname]["ports"])
    assert qiao["depends_on"]["standalone"]["condition"] == "service_healthy"
    assert (PROJECT_ROOT / qiao["build"]["dockerfile"]).is_file()
    standalone = services["standalone"]
    assert standalone["environment"]["ETCD_ENDPOINTS"].split(":")[0] in services
    assert standalone["environment"]["MINIO_ADDRESS"].split(":")[0] in services
    assert set(compose["volumes"]) >= {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}


def test_dockerfile_installs_the_milvus_and_ray_extras():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "'.[milvus,ray]'" in text
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "\nmilvus = [" in pyproject and "\nray = [" in pyproject
