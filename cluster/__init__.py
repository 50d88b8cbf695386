"""Cluster tooling: Ray cluster launcher YAML, KubeRay manifests, Dockerfile and a local multi-node
helper (added with the data factory)."""
