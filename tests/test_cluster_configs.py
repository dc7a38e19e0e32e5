"""cluster/: every YAML parses, has the expected kinds, a 0-CPU head, GPU workers, pinned images, consistent names."""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

import search_spaces
from search_spaces import load_job_spec

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
EXPECTED_KINDS = {
    "raycluster.yaml": ["Namespace", "PersistentVolumeClaim", "RayCluster"],
    "rayjob.yaml": ["RayJob"],
    "mlflow.yaml": ["Service", "StatefulSet", "PersistentVolumeClaim", "Deployment", "Service"],
}


def _docs(name: str) -> list[dict[str, Any]]:
    with open(CLUSTER / name) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(name) if d.get("kind") == kind]
    return doc


def _images(node: Any) -> list[str]:
    """Every value of an ``image`` key, anywhere in a parsed document."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                found.append(v)
            else:
                found += _images(v)
    elif isinstance(node, list):
        for v in node:
            found += _images(v)
    return found


def _tag(image: str) -> str | None:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_every_yaml_parses_with_expected_kinds() -> None:
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert names == sorted([*EXPECTED_KINDS, "autoscaler-aws.yaml"])
    for name, kinds in EXPECTED_KINDS.items():
        docs = _docs(name)
        assert [d["kind"] for d in docs] == kinds, name
        assert all("apiVersion" in d and d["metadata"]["name"] for d in docs), name
        namespaced = [d for d in docs if d["kind"] != "Namespace"]
        assert {d["metadata"]["namespace"] for d in namespaced} == {"srcompress"}, name
    (aws,) = _docs("autoscaler-aws.yaml")
    assert aws["provider"]["type"] == "aws" and aws["head_node_type"] in aws["available_node_types"]


def test_raycluster_head_has_no_cpus_and_gpu_group_requests_gpus() -> None:
    rc = _one("raycluster.yaml", "RayCluster")["spec"]
    assert rc["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = rc["workerGroupSpecs"]
    (container,) = gpu["template"]["spec"]["containers"]
    for part in ("limits", "requests"):
        assert int(container["resources"][part]["nvidia.com/gpu"]) >= 1
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 1
    # One worker pod must fit one trial of the cluster specs (workers x CPUs x GPUs).
    for name in ("edsr_cdism", "swinir_cdism", "imdn_cdism"):
        r = load_job_spec(search_spaces.path(name)).resources
        assert r.workers_per_trial * (r.gpus_per_worker or 1) <= int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert r.workers_per_trial * r.cpus_per_worker <= float(container["resources"]["limits"]["cpu"])


def test_raycluster_ray_version_matches_installed_ray() -> None:
    rc = _one("raycluster.yaml", "RayCluster")["spec"]
    assert rc["rayVersion"] == version("ray")
    for image in _images(rc):
        assert f"ray{version('ray')}" in _tag(image), image


def test_shared_volume_is_mounted_where_the_specs_write() -> None:
    docs = _docs("raycluster.yaml")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    rc = next(d for d in docs if d["kind"] == "RayCluster")["spec"]
    pods = [rc["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in rc["workerGroupSpecs"])]
    mounts = set()
    for pod in pods:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert pvc["metadata"]["name"] in claims.values()
        for c in pod["containers"]:
            mounts |= {m["mountPath"] for m in c["volumeMounts"] if claims.get(m["name"]) == pvc["metadata"]["name"]}
    (mount,) = mounts
    for name in ("edsr_cdism", "swinir_cdism", "imdn_cdism"):
        spec = load_job_spec(search_spaces.path(name))
        assert spec.storage.path.startswith(mount + "/") and spec.teacher.weights.startswith(mount + "/")


def test_token_auth_stays_on() -> None:
    rc = _one("raycluster.yaml", "RayCluster")["spec"]
    assert rc["authOptions"]["mode"] == "token"
    secret = rc["authOptions"]["secretName"]
    job = _one("rayjob.yaml", "RayJob")["spec"]
    env = {e["name"]: e for e in job["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
    (aws,) = _docs("autoscaler-aws.yaml")
    assert "--env RAY_AUTH_MODE=token" in aws["docker"]["run_options"]


def test_rayjob_runs_srcompress_on_the_raycluster() -> None:
    job = _one("rayjob.yaml", "RayJob")["spec"]
    rc = _one("raycluster.yaml", "RayCluster")
    assert job["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    entry = job["entrypoint"].split()
    assert entry[:2] == ["srcompress", "run"] and entry[-2:] == ["--address", "auto"]
    assert entry[2].startswith("/mnt/srcompress/") and entry[2].endswith(".yaml")
    assert Path(entry[2]).name in {p.name for p in search_spaces.path("demo").parent.glob("*.yaml")}


def test_autoscaler_head_has_no_cpus_and_workers_have_gpus() -> None:
    (aws,) = _docs("autoscaler-aws.yaml")
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in cmd and "--head" in cmd for cmd in aws["head_start_ray_commands"])
    workers = [t for n, t in types.items() if n != aws["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 and t["max_workers"] >= 1 for t in workers)
    assert sum(t["max_workers"] for t in workers) <= aws["max_workers"]


def test_mlflow_service_postgres_and_artifacts() -> None:
    docs = _docs("mlflow.yaml")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    assert svc["spec"]["selector"] == deploy["spec"]["template"]["metadata"]["labels"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    args = " ".join(c["args"])
    assert "--backend-store-uri" in args and "postgresql://" in args and "--artifacts-destination" in args
    assert svc["spec"]["ports"][0]["port"] == 5000
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    host = "mlflow.srcompress.svc.cluster.local:5000"
    assert any(
        re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), host)
        for p in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    )
    # The specs and the Ray pods point at this Service.
    rc_env = _one("raycluster.yaml", "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": f"http://{host}"} in rc_env
    assert load_job_spec(search_spaces.path("edsr_cdism")).tracking.uri in (
        f"http://{host}",
        os.environ.get("MLFLOW_TRACKING_URI"),
    )
    assert _tag(c["image"]).startswith(version("mlflow"))


def test_images_are_pinned() -> None:
    images = [img for name in (*EXPECTED_KINDS, "autoscaler-aws.yaml") for img in _images(_docs(name))]
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    images += re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert len(images) >= 8
    for image in images:
        tag = _tag(image)
        assert tag and tag != "latest", image
    assert f"rayproject/ray:{version('ray')}-py311-gpu" in images
    assert f"ghcr.io/mlflow/mlflow:v{version('mlflow')}" in images


def test_local_sh_syntax_and_settings() -> None:
    script = CLUSTER / "local.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    head = text[text.index("start --head") :].split("\n\n")[0]
    assert "--num-cpus 0" in head and "--dashboard-host 127.0.0.1" in head and '--dashboard-port "$DASH_PORT"' in head
    assert 'DASH_PORT="${SRCOMPRESS_LOCAL_DASHBOARD_PORT:-8265}"' in text
    assert '--address "$ADDRESS" --num-cpus "$CPUS"' in text and "--object-store-memory" in text
    assert 'RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"' in text
    assert '"$RAY_BIN" stop' not in text  # `ray stop` would also kill other Ray clusters on the machine


def test_heads_offer_the_trial_driver_resource():
    """Trials hold one unit of orchestrator.search.TRIAL_RESOURCE; a cluster without it cannot run a search."""
    import json

    from orchestrator.search import TRIAL_RESOURCE

    docs = list(yaml.safe_load_all((CLUSTER / "raycluster.yaml").read_text()))
    head = next(d for d in docs if d and d.get("kind") == "RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]
    assert json.loads(json.loads(head["resources"]))[TRIAL_RESOURCE] > 0
    aws = yaml.safe_load((CLUSTER / "autoscaler-aws.yaml").read_text())
    assert aws["available_node_types"][aws["head_node_type"]]["resources"][TRIAL_RESOURCE] > 0
    assert TRIAL_RESOURCE in (CLUSTER / "local.sh").read_text()
