"""The cluster manifests pass the KubeRay CRD schemas (checked in from KubeRay v1.7.0, closed to
unknown fields as `kubectl apply --validate=strict` is) and Ray's cluster-launcher schema, and agree
with the project; and each kind of mistake is caught: a wrong or misspelt field, a wrong type, a
wrong image tag, a wrong Ray version, an entry point or option that does not exist, a Serve import
path that does not exist."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import yaml

from cluster import manifests
from cluster.manifests import LAUNCHER, SCHEMAS, check_all, check_kuberay_document, check_launcher


def documents() -> dict[str, dict]:
    return dict(manifests.kuberay_documents())


def kind(found: dict[str, dict], name: str) -> tuple[str, dict]:
    return next((where, copy.deepcopy(doc)) for where, doc in found.items() if doc["kind"] == name)


def test_shipped_manifests_pass_every_check():
    assert check_all() == []


def test_the_resources_the_cluster_needs_are_there():
    found = documents()
    kinds = sorted(doc["kind"] for doc in found.values())
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") >= 3 and "ConfigMap" in kinds
    _, cluster = kind(found, "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head only drives
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) > 0
    entrypoints = sorted(doc["spec"]["entrypoint"].split()[1:3] for doc in found.values() if doc["kind"] == "RayJob")
    assert entrypoints == [["factory", "run"], ["train", "dit"], ["train", "vae"]]
    for doc in found.values():
        if doc["kind"] == "RayJob":
            assert "s3://" in doc["spec"]["entrypoint"] and doc["spec"]["clusterSelector"] == {
                "ray.io/cluster": cluster["metadata"]["name"]}


def test_every_pod_reads_storage_settings_from_the_secret_and_config_map_only():
    found = documents()
    _, config_map = kind(found, "ConfigMap")
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"} & set(config_map["data"])
    templates = [t for doc in found.values() for t in manifests.pod_templates(doc)]
    assert templates
    for template in templates:
        for container in template["spec"]["containers"]:
            assert container["envFrom"] == [{"secretRef": {"name": "avatar4d-s3"}},
                                            {"configMapRef": {"name": config_map["metadata"]["name"]}}]
            assert "env" not in container  # no key can be written into a manifest by accident
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    data = json.dumps([*found.values(), yaml.safe_load(LAUNCHER.read_text())])  # the YAML, not its comments
    assert "AWS_SECRET" not in data and "AWS_ACCESS_KEY" not in data and "aws_secret" not in data.lower()


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplica=1), "minReplica"),  # misspelt field
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(imagePullPolicyy="x"),
     "imagePullPolicyy"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="8"), "maxReplicas"),  # wrong type
    (lambda d: d["spec"].update(enableInTreeAutoscaling="yes"), "enableInTreeAutoscaling"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        image="registry.example.com/avatar4d:0.0.9"), "project version"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        image="registry.example.com/avatar4d"), "no tag"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        image="rayproject/ray:0.1.0"), "not the avatar4d image"),
    (lambda d: d["spec"].update(rayVersion="2.9.0"), "rayVersion"),
])
def test_a_wrong_raycluster_is_refused(mutate, expected):
    where, document = kind(documents(), "RayCluster")
    mutate(document)
    problems = check_kuberay_document(where, document)
    assert problems and any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("entrypoint, expected", [
    ("avatar4d factroy run --out s3://b/p", "not a valid avatar4d command line"),
    ("avatar4d factory run --out s3://b/p --no-such-option", "not a valid avatar4d command line"),
    ("avatar4d train vae --recipe huge", "not a valid avatar4d command line"),
    ("avatar4d train gann --data s3://b/p", "not a valid avatar4d command line"),
    ("python -m factory.cli run", "not a console script"),
    ("avatar4d factory run --out 'unterminated", "does not parse"),
])
def test_a_rayjob_whose_entry_point_does_not_exist_is_refused(entrypoint, expected):
    where, document = kind(documents(), "RayJob")
    document["spec"]["entrypoint"] = entrypoint
    problems = check_kuberay_document(where, document)
    assert any(expected in problem for problem in problems), problems


def test_a_rayjob_with_a_field_of_another_kind_is_refused():
    where, document = kind(documents(), "RayJob")
    document["spec"]["serveConfigV2"] = "applications: []"  # a RayService field
    assert any("serveConfigV2" in problem for problem in check_kuberay_document(where, document))


def test_rayservice_import_paths_must_exist_in_the_project():
    _, cluster = kind(documents(), "RayCluster")
    service = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "s"},
               "spec": {"rayClusterConfig": cluster["spec"],
                        "serveConfigV2": "applications:\n  - name: a\n    import_path: factory.cli:register\n"}}
    assert check_kuberay_document("s", service) == []  # an existing module attribute
    for wrong in ("factory.cli:no_such_builder", "no_such_package.app:app", "json:loads"):
        service["spec"]["serveConfigV2"] = f"applications:\n  - name: a\n    import_path: {wrong}\n"
        problems = check_kuberay_document("s", service)
        assert problems and "import path" in problems[0], (wrong, problems)


def test_launcher_yaml_is_checked_against_rays_schema_and_the_project(tmp_path):
    assert check_launcher() == []
    document = yaml.safe_load(LAUNCHER.read_text())
    for mutate, expected in [(lambda d: d.update(max_worker=8), "max_worker"),
                             (lambda d: d["docker"].update(image="registry.example.com/avatar4d:9.9.9"), "9.9.9"),
                             (lambda d: d["setup_commands"].append("avatar4d factory runn"), "not a valid"),
                             (lambda d: d["available_node_types"]["gpu_worker"].update(min_worker=0), "min_worker")]:
        broken = copy.deepcopy(document)
        mutate(broken)
        path = tmp_path / "ray-cluster.yaml"
        path.write_text(yaml.safe_dump(broken))
        problems = check_launcher(path)
        assert any(expected in problem for problem in problems), (expected, problems)


def test_checked_in_schemas_name_their_release_and_are_kuberay_v1():
    for name in ("RayCluster", "RayJob", "RayService"):
        schema = json.loads((SCHEMAS / f"{name}.v1.json").read_text())
        source = schema["x-avatar4d-source"]
        assert source["release"] == "ray-project/kuberay v1.7.0" and source["kind"] == name
        assert len(source["sha256"]) == 64 and source["group"] == "ray.io"
        assert {"spec", "metadata", "apiVersion", "kind"} <= set(schema["properties"])
        # descriptions are gone, constraints are not
        text = json.dumps(schema)
        assert '"description": "' not in text and "x-kubernetes-int-or-string" in text
    digest = hashlib.sha256((SCHEMAS / "RayJob.v1.json").read_bytes()).hexdigest()
    assert len(digest) == 64


def test_strict_closes_listed_properties_only():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}},
                                               "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                                        "properties": {"c": {}}},
                                               "map": {"type": "object", "additionalProperties": {"type": "string"}}}}
    closed = manifests.strict(schema)
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["properties"]["map"]["additionalProperties"] == {"type": "string"}


def test_rayservice_runs_the_serve_application_with_valid_settings():
    from avatar4d.config import ConfigError
    from serve.settings import ServeSettings

    _, service = kind(documents(), "RayService")
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert application["import_path"] == "serve.app:app_builder"
    settings = ServeSettings.from_args(application["args"])  # unknown or invalid settings raise
    assert settings.checkpoints == "/models" and settings.max_replicas > 1
    deployments = {d["name"] for d in application["deployments"]}
    assert {"AvatarGenerator", "FrameRenderer"} <= deployments
    with pytest.raises(ConfigError, match="unknown key"):
        ServeSettings.from_args({**application["args"], "checkpoint": "/models"})


def test_init_container_images_are_checked_too():
    where, service = kind(documents(), "RayService")
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["initContainers"][0]["image"] = "busybox"
    assert any("busybox" in problem for problem in check_kuberay_document(where, service))
