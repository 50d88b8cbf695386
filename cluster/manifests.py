"""Check the cluster manifests before they reach a cluster: KubeRay resources against the KubeRay
CRD schemas (checked in under ``cluster/schemas``, from a KubeRay release), the cluster-launcher
YAML against the schema Ray ships (``ray/autoscaler/ray-schema.json``), and both against the
project: image tags equal to the version in ``pyproject.toml``, ``rayVersion`` equal to the pinned
Ray, and every command an entry point that exists and parses (``avatar4d …`` through the real
argument parser, Serve ``import_path`` s through the module that defines them).

Strictness: Kubernetes prunes unknown fields of a CRD silently (``kubectl apply`` warns at most),
so a typo such as ``minReplica`` would be dropped, not refused. :func:`strict` closes every object
schema that lists its properties (``additionalProperties: false`` unless the schema allows more),
which is what ``kubectl apply --validate=strict`` does on the server.

    python -m cluster.manifests            # checks every manifest; exit 1 with one line per problem
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CLUSTER = Path(__file__).resolve().parent
REPO = CLUSTER.parent
SCHEMAS = CLUSTER / "schemas"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
IMAGE_NAME = "avatar4d"
CORE_KINDS = {("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "PersistentVolumeClaim"), ("v1", "ServiceAccount")}


class ManifestError(ValueError):
    """A manifest breaks its schema or disagrees with the project."""


# ---- the project's facts ------------------------------------------------------------------------


@functools.cache
def project() -> dict[str, Any]:
    """``[project]`` of pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as a package (pip brings it)
        import tomli as tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@functools.cache
def pinned_ray() -> str:
    """The Ray version constraints.txt pins."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip().lower().startswith("ray=="):
            return line.split("==", 1)[1].strip()
    raise ManifestError("constraints.txt pins no ray version")


def expected_tag() -> str:
    return str(project()["version"])


# ---- schemas ------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """``schema`` with every object schema that lists ``properties`` closed to other keys (unless it
    already says what else is allowed or preserves unknown fields)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: (strict(value) if key != "properties" else {k: strict(v) for k, v in value.items()})
              for key, value in schema.items()}
    if ("properties" in closed and "additionalProperties" not in closed
            and not closed.get("x-kubernetes-preserve-unknown-fields")):
        closed["additionalProperties"] = False
    return closed


@functools.cache
def crd_validator(kind: str) -> Any:
    import jsonschema

    path = SCHEMAS / f"{kind}.v1.json"
    if not path.is_file():
        raise ManifestError(f"no checked-in schema for kind {kind!r} ({path.name})")
    return jsonschema.Draft7Validator(strict(json.loads(path.read_text())))


@functools.cache
def launcher_validator() -> Any:
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: Any, document: dict[str, Any], where: str) -> list[str]:
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(part) for part in error.absolute_path) or "(top)"
        problems.append(f"{where}: {path}: {error.message}")
    return problems


# ---- walking manifests --------------------------------------------------------------------------


def kuberay_documents(folder: Path = KUBERAY) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file#index``, document) for every YAML document under ``folder``."""
    for path in sorted(folder.glob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document is not None:
                yield f"{path.name}#{index}", document


def pod_templates(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every pod template of a RayCluster spec, wherever the resource embeds one."""
    spec = document.get("spec", {})
    clusters = [spec] if document.get("kind") == "RayCluster" else []
    clusters += [spec[key] for key in ("rayClusterSpec", "rayClusterConfig") if isinstance(spec.get(key), dict)]
    for cluster in clusters:
        head = cluster.get("headGroupSpec", {}).get("template")
        if head:
            yield head
        for group in cluster.get("workerGroupSpecs", []) or []:
            if group.get("template"):
                yield group["template"]


def ray_versions(document: dict[str, Any]) -> Iterator[str]:
    spec = document.get("spec", {})
    for cluster in (spec, spec.get("rayClusterSpec") or {}, spec.get("rayClusterConfig") or {}):
        if "rayVersion" in cluster:
            yield str(cluster["rayVersion"])


# ---- project consistency ------------------------------------------------------------------------


def check_image(image: str, where: str) -> list[str]:
    """``<registry>/avatar4d:<project version>``."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return [f"{where}: image {image!r} has no tag (use {IMAGE_NAME}:{expected_tag()})"]
    problems = []
    if name.rsplit("/", 1)[-1] != IMAGE_NAME:
        problems.append(f"{where}: image {image!r} is not the {IMAGE_NAME} image built from cluster/Dockerfile")
    if tag != expected_tag():
        problems.append(f"{where}: image tag {tag!r} differs from the project version {expected_tag()!r} "
                        "(pyproject.toml)")
    return problems


def check_command(command: str, where: str) -> list[str]:
    """A shell command that must run one of the project's console scripts with valid arguments."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        return [f"{where}: command {command!r} does not parse: {error}"]
    scripts = project().get("scripts", {})
    if not words or words[0] not in scripts:
        return [f"{where}: {words[0] if words else '(empty)'!r} is not a console script of the project "
                f"(pyproject.toml [project.scripts]: {sorted(scripts)})"]
    if scripts[words[0]] != "avatar4d.cli:main":
        return []
    from avatar4d.cli import build_parser

    arguments = words[1:]
    parser = build_parser(arguments)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(arguments)
    except SystemExit as stop:
        if stop.code:
            return [f"{where}: `{command}` is not a valid avatar4d command line (see `avatar4d --help`)"]
    return []


def check_import_path(import_path: str, where: str) -> list[str]:
    """``module:attribute`` (or ``module.attribute``) whose module is part of the project and
    defines the attribute at top level (read from its source: nothing is imported)."""
    import ast
    import importlib.util

    module, sep, attribute = import_path.partition(":")
    if not sep:
        module, _, attribute = import_path.rpartition(".")
    spec = importlib.util.find_spec(module.split(".")[0]) and importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(REPO):
        return [f"{where}: import path {import_path!r}: module {module!r} is not part of the project"]
    tree = ast.parse(Path(spec.origin).read_text())
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    names |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
              if isinstance(target, ast.Name)}
    if attribute not in names:
        return [f"{where}: import path {import_path!r}: {module} defines no {attribute!r}"]
    return []


def check_kuberay_document(where: str, document: dict[str, Any]) -> list[str]:
    kind, api = document.get("kind"), document.get("apiVersion")
    if (api, kind) in CORE_KINDS:
        return [] if document.get("metadata", {}).get("name") else [f"{where}: {kind} without metadata.name"]
    if api != "ray.io/v1":
        return [f"{where}: apiVersion {api!r} kind {kind!r}: expected ray.io/v1 or one of {sorted(CORE_KINDS)}"]
    try:
        problems = _schema_errors(crd_validator(str(kind)), document, where)
    except ManifestError as error:
        return [f"{where}: {error}"]
    if not document.get("metadata", {}).get("name"):
        problems.append(f"{where}: metadata.name is missing")
    for version in ray_versions(document):
        if version != pinned_ray():
            problems.append(f"{where}: rayVersion {version!r} differs from the pinned ray=={pinned_ray()}")
    for template in pod_templates(document):
        spec_ = template.get("spec", {})
        for container in [*spec_.get("initContainers", []), *spec_.get("containers", [])]:
            problems += check_image(str(container.get("image", "")), f"{where} container {container.get('name')}")
    spec = document.get("spec", {})
    if kind == "RayJob":
        problems += check_command(str(spec.get("entrypoint", "")), f"{where} entrypoint")
    if kind == "RayService":
        serve = yaml.safe_load(spec.get("serveConfigV2") or "{}") or {}
        applications = serve.get("applications") or []
        if not applications:
            problems.append(f"{where}: serveConfigV2 declares no application")
        for application in applications:
            problems += check_import_path(str(application.get("import_path", "")),
                                          f"{where} application {application.get('name')}")
    return problems


def check_launcher(path: Path = LAUNCHER) -> list[str]:
    """The cluster-launcher YAML against Ray's schema, its image and its commands."""
    document = yaml.safe_load(path.read_text())
    where = path.name
    problems = _schema_errors(launcher_validator(), document, where)
    image = (document.get("docker") or {}).get("image")
    if image:
        problems += check_image(str(image), f"{where} docker.image")
    for node_type, spec in (document.get("available_node_types") or {}).items():
        node_image = (spec.get("docker") or {}).get("worker_image") or (spec.get("docker") or {}).get("head_image")
        if node_image:
            problems += check_image(str(node_image), f"{where} {node_type}")
    for line in _launcher_commands(document):
        problems += check_command(line, f"{where} command")
    return problems


_AVATAR4D_COMMAND = re.compile(r"(?:^|&&|;|\|\|)\s*(avatar4d\s[^;&|]*)")


def _launcher_commands(document: dict[str, Any]) -> Iterator[str]:
    """``avatar4d …`` commands in the launcher's command lists and its header comment's examples."""
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        for line in document.get(key) or []:
            for match in _AVATAR4D_COMMAND.finditer(str(line)):
                yield match.group(1).strip()


def check_all() -> list[str]:
    """Every problem of every manifest (empty: all good)."""
    problems = []
    for where, document in kuberay_documents():
        problems += check_kuberay_document(where, document)
    problems += check_launcher()
    return problems


def main() -> int:
    problems = check_all()
    for problem in problems:
        sys.stderr.write(f"{problem}\n")
    if not problems:
        sys.stdout.write(f"manifests ok: {KUBERAY.relative_to(REPO)}/*.yaml against KubeRay schemas, "
                         f"{LAUNCHER.relative_to(REPO)} against Ray's cluster-launcher schema\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
