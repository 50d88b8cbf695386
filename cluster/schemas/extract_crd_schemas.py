"""Make the checked-in KubeRay schemas from the CRDs of a KubeRay release.

    git clone https://github.com/ray-project/kuberay && cd kuberay && git checkout v1.7.0
    cd helm-chart/kuberay-operator/crds
    python -m cluster.schemas.extract_crd_schemas ray.io_{rayclusters,rayjobs,rayservices}.yaml

For each CRD it writes ``cluster/schemas/<kind>.v1.json``: the ``openAPIV3Schema`` of the served
``v1`` version with the ``description`` texts removed (they are ~80 % of the bytes and carry no
constraint), plus the source file's sha256 and the release under ``x-avatar4d-source``. Nothing
else is changed, so the schema constrains exactly what the API server checks.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RELEASE = "v1.7.0"


def strip_descriptions(node: Any) -> Any:
    """``node`` without the ``description`` texts of schema objects (a property *named*
    ``description`` under ``properties`` is kept)."""
    if isinstance(node, dict):
        return {key: (strip_descriptions(value) if key != "properties" else
                      {name: strip_descriptions(child) for name, child in value.items()})
                for key, value in node.items() if key != "description" or not isinstance(value, str)}
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def extract(crd_file: Path, release: str = RELEASE) -> Path:
    raw = crd_file.read_bytes()
    crd = yaml.safe_load(raw)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
    schema["x-avatar4d-source"] = {"release": f"ray-project/kuberay {release}",
                                   "file": f"helm-chart/kuberay-operator/crds/{crd_file.name}",
                                   "sha256": hashlib.sha256(raw).hexdigest(), "kind": crd["spec"]["names"]["kind"],
                                   "group": crd["spec"]["group"], "version": "v1"}
    target = HERE / f"{crd['spec']['names']['kind']}.v1.json"
    target.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
    return target


if __name__ == "__main__":
    for name in sys.argv[1:]:
        sys.stdout.write(f"{extract(Path(name))}\n")
