"""cluster/Dockerfile agrees with the project (no Docker daemon here, so the file is read, not
built): CUDA base images matching torch's pinned CUDA runtime, the pinned dependencies, nvdiffrast
from the `cuda` extra compiled in the build stage and found at run time, a non-root user with the
uid the KubeRay pods run as, and a build context that leaves local state out."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from packaging.requirements import Requirement

from cluster.manifests import REPO, project

DOCKERFILE = REPO / "cluster" / "Dockerfile"
DOCKERIGNORE = REPO / "cluster" / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    found = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    named: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            named[current] = [(word, rest)]
        elif current is not None:
            named[current].append((word, rest))
    return named


def build_args() -> dict[str, str]:
    return {m.group(1): m.group(2).strip('"') for word, rest in instructions() if word == "ARG"
            for m in [re.match(r"(\w+)=(.*)", rest)] if m}


def pinned(package: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def test_cuda_images_match_the_pinned_cuda_runtime_of_torch():
    args = build_args()
    found = stages()
    assert list(found) == ["build", "runtime"]
    build_from, runtime_from = found["build"][0][1], found["runtime"][0][1]
    assert build_from.startswith("nvidia/cuda:${CUDA_IMAGE_VERSION}-devel-${UBUNTU}")  # nvcc for nvdiffrast
    assert runtime_from.startswith("nvidia/cuda:${CUDA_IMAGE_VERSION}-runtime-${UBUNTU}")
    cuda_major_minor = ".".join(args["CUDA_IMAGE_VERSION"].split(".")[:2])
    assert cuda_major_minor == ".".join(pinned("nvidia-cuda-runtime").split(".")[:2])  # torch's CUDA wheels
    assert "+cu" not in pinned("torch") or pinned("torch").endswith(cuda_major_minor.replace(".", ""))


def test_pinned_dependencies_and_the_project_are_installed():
    runs = " ".join(rest for word, rest in stages()["build"] if word == "RUN")
    assert "pip install -r constraints.txt" in runs
    assert "pip install -c constraints.txt --no-deps ." in runs
    python = re.search(r"python3\.(\d+) -m venv", runs)
    assert python and Requirement(f"x{project()['requires-python']}").specifier.contains(f"3.{python.group(1)}")


def test_nvdiffrast_of_the_cuda_extra_is_compiled_at_build_time_and_found_at_run_time():
    args = build_args()
    (spec,) = [Requirement(r) for r in project()["optional-dependencies"]["cuda"]]
    assert spec.name == "diffrp-nvdiffrast" and spec.specifier.contains(args["NVDIFFRAST_VERSION"])
    build, runtime = stages()["build"], stages()["runtime"]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert '"diffrp-nvdiffrast==${NVDIFFRAST_VERSION}"' in runs and "ops._get_plugin(gl=False)" in runs
    assert "TORCH_CUDA_ARCH_LIST" in args  # no GPU at build time: the architectures are named
    for stage in (build, runtime):
        assert any(word == "ENV" and "TORCH_EXTENSIONS_DIR=/opt/torch_extensions" in rest for word, rest in stage)
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert "--from=build /opt/torch_extensions /opt/torch_extensions" in copies
    assert "--from=build /opt/avatar4d /opt/avatar4d" in copies


def test_the_image_runs_as_a_non_root_user_with_the_pods_uid():
    runtime = stages()["runtime"]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert f"useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash {users[-1]}" in runs
    position = {word: index for index, (word, _) in enumerate(runtime)}
    assert position["USER"] < position["CMD"]
    from cluster.manifests import kuberay_documents, pod_templates

    uids = {t["spec"]["securityContext"]["runAsUser"] for _, doc in kuberay_documents() for t in pod_templates(doc)}
    assert uids == {1000}
    assert "wget" in runs  # KubeRay's health probes call it


def test_build_context_leaves_local_state_out_and_keeps_the_sources():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern)
                   or fnmatch.fnmatch(path, pattern.removeprefix("**/")) for pattern in patterns)

    for path in (".venv", ".git", "data", "runs", "outputs", "mlruns", "factory/__pycache__", "x/pairs.lance"):
        assert ignored(path), path
    for path in ("pyproject.toml", "constraints.txt", "avatar4d", "factory", "train", "serve", "cluster", "README.md"):
        assert not ignored(path), path
    assert Path(DOCKERIGNORE).name == f"{DOCKERFILE.name}.dockerignore"  # what BuildKit reads for this file
