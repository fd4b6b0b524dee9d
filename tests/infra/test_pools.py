"""The GPU work pool templates (infra/pools/), the worker manifest (infra/k8s/) and the worker image
definition, checked offline and fast: valid JSON in the shape `prefect work-pool create
--base-job-template` takes, the server's template rule, defaults and sample job variables valid
against the variables schema, and the job configuration rendered with Prefect's own templating
(the GPU limits, node selector, /dev/shm and data mounts end up where the worker reads them).
When prefect-docker / prefect-kubernetes are installed, their job configuration classes build from
the templates too. No server, no network, no Docker engine, no cluster.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.schema_tools.validation import validate
from prefect.utilities.templating import apply_values
from prefect.workers.base import BaseJobConfiguration

ROOT = Path(__file__).resolve().parents[2]
POOLS = ROOT / "infra" / "pools"
GENIE_ROOT = "/opt/genie"
COMMON = {"env", "image", "command", "name", "labels", "gpu_count", "shm_size"}
EXPECTED = {
    "docker": COMMON | {"volumes", "auto_remove", "stream_output"},
    "kubernetes": COMMON | {"namespace", "node_selector", "tolerations", "data_pvc", "cpu_request",
                            "memory_request", "pod_watch_timeout_seconds"},
}  # fmt: skip


def _template(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((POOLS / f"{kind}-gpu.json").read_text())
    return data


def _defaults(t: dict[str, Any]) -> dict[str, Any]:
    """The variables' defaults as a worker takes them (None defaults dropped)."""
    defaults: dict[str, Any] = BaseJobConfiguration._get_base_config_defaults(
        t["variables"]["properties"]
    )
    return defaults


def _render(t: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a worker gets (as BaseJobConfiguration.from_template_and_values does it, without a
    server): defaults overlaid by job variables, `env` merged, applied to job_configuration."""
    values = values or {}
    variables = _defaults(t) | values
    variables["env"] = _defaults(t).get("env", {}) | values.get("env", {})
    rendered: dict[str, Any] = apply_values(t["job_configuration"], variables)
    return rendered


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_template_shape_and_server_rule(kind: str) -> None:
    t = _template(kind)
    assert set(t) == {"job_configuration", "variables"}
    props = t["variables"]["properties"]
    assert EXPECTED[kind] <= set(props), EXPECTED[kind] - set(props)
    # the rule the API applies on create/update: every {{ placeholder }} is a declared variable
    pool = WorkPoolCreate(name="gpu", type=kind, base_job_template=t)
    assert pool.base_job_template == t
    env = props["env"]["default"]
    assert env["GENIE_ROOT"] == GENIE_ROOT and "CUDA_VISIBLE_DEVICES" not in env
    assert "CUDA_VISIBLE_DEVICES" in props["env"]["description"]
    assert props["image"]["default"] == "open-genie-worker:gpu"


def test_undeclared_placeholder_is_rejected() -> None:
    t = _template("kubernetes")
    t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["priorityClassName"] = (
        "{{ priority_class }}"
    )
    with pytest.raises(ValueError, match="priority_class"):
        WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=t)


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("docker", {}),
        ("docker", {"gpu_count": 2, "shm_size": "32g", "env": {"CUDA_VISIBLE_DEVICES": "0,1"}}),
        ("kubernetes", {}),
        ("kubernetes", {"gpu_count": 8, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                        "env": {"CUDA_VISIBLE_DEVICES": "0"}}),
    ],
)  # fmt: skip
def test_job_variables_validate_against_schema(kind: str, values: dict[str, Any]) -> None:
    t = _template(kind)
    schema = t["variables"]
    validate(_defaults(t) | values, schema, raise_on_error=True, ignore_required=True)


@pytest.mark.parametrize(("kind", "bad"), [("docker", {"gpu_count": -2}),
                                           ("kubernetes", {"gpu_count": "two"}),
                                           ("kubernetes", {"node_selector": {"gpu": 1}})])  # fmt: skip
def test_bad_job_variables_fail_validation(kind: str, bad: dict[str, Any]) -> None:
    t = _template(kind)
    with pytest.raises(Exception, match="Validation failed"):
        validate(_defaults(t) | bad, t["variables"], raise_on_error=True, ignore_required=True)


def test_docker_render_gpus_shm_volumes() -> None:
    t = _template("docker")
    cfg = _render(t)
    kwargs = cfg["container_create_kwargs"]
    assert kwargs["shm_size"] == "16g"
    assert kwargs["device_requests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}
    ]
    assert f"/srv/genie/data:{GENIE_ROOT}/data" in cfg["volumes"]
    assert f"/srv/genie/runs:{GENIE_ROOT}/runs" in cfg["volumes"]
    assert cfg["env"]["GENIE_ROOT"] == GENIE_ROOT
    two = _render(t, {"gpu_count": 2, "env": {"CUDA_VISIBLE_DEVICES": "1"}})
    assert two["container_create_kwargs"]["device_requests"][0]["count"] == 2
    assert two["env"]["CUDA_VISIBLE_DEVICES"] == "1" and two["env"]["GENIE_ROOT"] == GENIE_ROOT


def test_kubernetes_render_gpu_limits_selector_shm_data() -> None:
    t = _template("kubernetes")
    cfg = _render(t)
    job = cfg["job_manifest"]
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "genie"
    assert job["spec"]["completions"] == 1 and job["spec"]["parallelism"] == 1
    pod = job["spec"]["template"]["spec"]
    assert "completions" not in pod and pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["name"] == "prefect-job"  # the container the Kubernetes worker fills in
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "24Gi"}
    assert "cpu" not in c["resources"]["limits"]  # unset variables drop out
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert taint in pod["tolerations"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert vols["genie-data"]["persistentVolumeClaim"]["claimName"] == "genie-data"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts[f"{GENIE_ROOT}/data"]["subPath"] == "data"
    assert mounts[f"{GENIE_ROOT}/runs"]["subPath"] == "runs"
    eight = _render(t, {"gpu_count": 8, "data_pvc": "other", "shm_size": "64Gi"})
    pod8 = eight["job_manifest"]["spec"]["template"]["spec"]
    assert pod8["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {v["name"]: v for v in pod8["volumes"]}["genie-data"]["persistentVolumeClaim"] == {
        "claimName": "other"
    }


@pytest.mark.parametrize(
    ("kind", "module", "cls"),
    [("docker", "prefect_docker.worker", "DockerWorkerJobConfiguration"),
     ("kubernetes", "prefect_kubernetes.worker", "KubernetesWorkerJobConfiguration")],
)  # fmt: skip
def test_worker_job_configuration_builds(kind: str, module: str, cls: str) -> None:
    """The worker package's own model parses the rendered configuration (skipped when the package
    is not installed, as in the project venv)."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module.split('.')[0]} not installed (only needed where that worker runs)")
    config_cls = getattr(importlib.import_module(module), cls)
    # from_template_and_values minus block/variable resolution, which needs an API server
    cfg = config_cls(**_render(_template(kind), {"gpu_count": 2})).model_dump()
    if kind == "docker":
        assert cfg["container_create_kwargs"]["device_requests"][0]["count"] == 2
    else:
        (c,) = cfg["job_manifest"]["spec"]["template"]["spec"]["containers"]
        limits = c["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 2
    assert cfg["env"]["GENIE_ROOT"] == GENIE_ROOT


def test_k8s_worker_manifest() -> None:
    text = (ROOT / "infra" / "k8s" / "gpu-worker.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    by_kind = {d["kind"]: d for d in docs}
    kinds = {"Namespace", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding"}
    kinds.add("Deployment")
    assert kinds <= set(by_kind)
    assert {d["metadata"].get("namespace", "genie") for d in docs} == {"genie"}
    pvc = by_kind["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == _defaults(_template("kubernetes"))["data_pvc"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    rules = by_kind["Role"]["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    assert any("pods/log" in r["resources"] for r in rules)
    dep = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert dep["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    (c,) = dep["containers"]
    cmd = " ".join(c["command"])
    assert "prefect worker start --pool gpu --type kubernetes" in cmd
    assert any(e["name"] == "PREFECT_API_URL" for e in c["env"])
    # the Jobs take the GPUs, not the worker
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])


def test_worker_dockerfile() -> None:
    text = (ROOT / "infra" / "docker" / "Dockerfile.worker").read_text()
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in text and "FROM ${CUDA_IMAGE}" in text
    assert 'ARG TORCH_SPEC="torch==2.13.0"' in text and "ARG TORCH_INDEX_URL" in text
    assert "python3.11" in text and "ffmpeg" in text and "GENIE_ROOT=/opt/genie" in text
    assert 'CMD ["prefect", "worker", "start", "--pool", "gpu"' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject  # TORCH_SPEC must keep satisfying the project's pin
