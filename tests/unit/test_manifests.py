"""The Kubernetes manifests in deploy/kubernetes (no cluster here): rendered as kustomize renders
them, every document valid against the Kubernetes API's schemas (strict: no unknown field), and
the properties that many replicas behind one Service need."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config import VARIABLES, Settings, load_settings
from server import CUT_OFF_SECONDS
from tests.nginx import nginx_size
from tests.support import ROOT

KUSTOMIZATION = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release the manifests are for, and the newest the validator has schemas of.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# The S3 media store's settings, read beside config.py's own; AWS_* are read by the S3 client.
S3_SETTINGS = {"MEDIA_STORE", "S3_ENDPOINT_URL", "S3_BUCKET", "S3_REGION"}
AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# PostgreSQL's default max_connections (100) less its superuser_reserved_connections (3).
POSTGRES_CONNECTIONS = 97
INGRESS_NGINX = "nginx.ingress.kubernetes.io/"
BINARY_SUFFIXES = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def load(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, empty ones left out."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a workload's pod template (none for other kinds)."""
    return list(document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []))


def quantity(value: str) -> int:
    """The bytes in a Kubernetes quantity with a binary suffix (64Mi, 3Gi)."""
    return int(value[:-2]) * BINARY_SUFFIXES[value[-2:]]


def render() -> list[dict[str, Any]]:
    """What `kubectl kustomize deploy/kubernetes` makes: the resources, in order, with `images`
    applied. The kustomization uses nothing else, which the first assertion keeps true."""
    kustomization = load(KUSTOMIZATION / "kustomization.yaml")[0]
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images"}, "render() applies no more"
    documents = [document for name in kustomization["resources"] for document in load(KUSTOMIZATION / name)]
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for document in documents:
        for container in containers(document):
            name, _, tag = container["image"].partition(":")
            if name in images:
                image = images[name]
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return documents


RENDERED = render()
SECRET = load(KUSTOMIZATION / "secret.example.yaml")[0]


def the(kind: str) -> dict[str, Any]:
    """The one rendered document of `kind`."""
    found = [document for document in RENDERED if document["kind"] == kind]
    assert len(found) == 1, f"{len(found)} documents of kind {kind}"
    return found[0]


DEPLOYMENT = the("Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
APP = POD["containers"][0]
POD_LABELS: dict[str, str] = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
ENVIRONMENT: dict[str, str] = {**the("ConfigMap")["data"], **SECRET["stringData"]}
SETTINGS: Settings = load_settings(ENVIRONMENT)


def by_kind_and_name(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(documents, key=lambda document: (document["kind"], document["metadata"]["name"]))


def test_rendering_matches_kubectl_kustomize():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests are rendered by loading them only")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZATION)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert by_kind_and_name(rendered) == by_kind_and_name(RENDERED)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_is_valid_kubernetes(version):
    for document in [*RENDERED, SECRET]:
        kubernetes_validate.validate(document, version, strict=True)
    kinds = sorted(document["kind"] for document in RENDERED)
    expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget"]
    assert kinds == sorted([*expected, "Service"])


def test_validation_catches_a_misplaced_field():
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_settings_come_from_the_config_map_and_the_secret():
    assert {source.get("configMapRef", source.get("secretRef"))["name"] for source in APP["envFrom"]} == {
        the("ConfigMap")["metadata"]["name"],
        SECRET["metadata"]["name"],
    }
    assert set(ENVIRONMENT) <= set(VARIABLES) | S3_SETTINGS | AWS_CREDENTIALS
    assert set(SECRET["stringData"]) == {"DATABASE_URL"} | AWS_CREDENTIALS
    assert not set(SECRET["stringData"]) & set(the("ConfigMap")["data"])
    # `kubectl apply -k` must never overwrite the real Secret with the example's values.
    assert "secret.example.yaml" not in load(KUSTOMIZATION / "kustomization.yaml")[0]["resources"]
    assert SETTINGS.port == APP["ports"][0]["containerPort"] and SETTINGS.host == "0.0.0.0"


def patience(probe: dict[str, Any]) -> int:
    """Seconds of failures before a probe acts."""
    return int(probe["periodSeconds"] * probe["failureThreshold"])


def test_three_replicas_probed_on_health():
    assert DEPLOYMENT["spec"]["replicas"] == 3
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert APP[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert APP["ports"][0]["name"] == "http"
    # Readiness notices a lost database before liveness would restart the pod for it.
    assert patience(APP["readinessProbe"]) < patience(APP["livenessProbe"])
    assert patience(APP["startupProbe"]) > SETTINGS.db_wait_seconds


def test_grace_period_covers_the_pre_stop_pause_and_the_service_shutdown():
    command = APP["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    assert pause >= 5, "the endpoint needs a few seconds to leave the Service and the ingress"
    assert POD["terminationGracePeriodSeconds"] > pause + SETTINGS.shutdown_grace_seconds + CUT_OFF_SECONDS


def test_pods_run_as_the_image_user_non_root_on_a_read_only_root():
    pod, container = POD["securityContext"], APP["securityContext"]
    assert pod["runAsNonRoot"] is True and container["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert POD["automountServiceAccountToken"] is False


def test_scratch_is_an_empty_dir_where_uploads_in_progress_go():
    volumes = {volume["name"]: volume for volume in POD["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in APP["volumeMounts"]}
    assert all("emptyDir" in volume for volume in mounts.values())
    scratch = mounts["/data"]
    for directory in (SETTINGS.data_dir, SETTINGS.media_root):
        assert Path("/data") in [directory, *directory.parents], directory
    assert "/tmp" in mounts
    # An emptyDir goes with its pod: the MP3s themselves must be in the shared bucket.
    assert ENVIRONMENT["MEDIA_STORE"] == "s3"
    # Every upload slot full, each with a WAV of the largest size and its MP3, stays under the limit
    # (a pod over it is evicted).
    slots = SETTINGS.workers * (SETTINGS.convert_workers + SETTINGS.convert_queue)
    assert quantity(scratch["emptyDir"]["sizeLimit"]) >= 2 * slots * SETTINGS.max_upload_bytes


def test_resources_are_requested_and_limited():
    resources = APP["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    # os.cpu_count() in a container is the node's: CONVERT_WORKERS is set to the CPU limit instead.
    assert "CONVERT_WORKERS" in ENVIRONMENT
    assert SETTINGS.convert_workers == int(resources["limits"]["cpu"])


def test_service_sends_to_the_pods_http_port():
    service = the("Service")
    assert service["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= POD_LABELS.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_ingress_streams_uploads_up_to_max_upload_bytes():
    ingress = the("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert nginx_size(annotations[INGRESS_NGINX + "proxy-body-size"]) == SETTINGS.max_upload_bytes
    assert annotations[INGRESS_NGINX + "proxy-request-buffering"] == "off"
    assert int(annotations[INGRESS_NGINX + "proxy-read-timeout"]) >= (
        SETTINGS.upload_timeout + SETTINGS.convert_timeout
    )
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": the("Service")["metadata"]["name"], "port": {"name": "http"}}
    assert SETTINGS.public_url == f"https://{ingress['spec']['rules'][0]['host']}"


def test_disruption_budget_keeps_most_pods_up():
    budget = the("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= POD_LABELS.items()
    assert budget["maxUnavailable"] == 1 < DEPLOYMENT["spec"]["replicas"]


def test_autoscaler_stays_within_postgresql_connections():
    autoscaler = the("HorizontalPodAutoscaler")["spec"]
    target = autoscaler["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    assert autoscaler["minReplicas"] == DEPLOYMENT["spec"]["replicas"] < autoscaler["maxReplicas"]
    assert autoscaler["metrics"][0]["resource"]["name"] == "cpu" and "cpu" in APP["resources"]["requests"]
    # At the most pods a rollout can have, every pool full.
    pods = autoscaler["maxReplicas"] + DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert pods * SETTINGS.workers * SETTINGS.db_pool_size <= POSTGRES_CONNECTIONS
