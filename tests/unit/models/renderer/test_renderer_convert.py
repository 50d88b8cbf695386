"""The released renderer's pickle → our checkpoint: every tensor arrives, embedded code never runs."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from avatar4d.checkpoint import CheckpointError, UnsafePickleError
from avatar4d.cli import main
from avatar4d.models.renderer import RENDERER_PRESETS, MotionAwareRenderer
from avatar4d.models.renderer.convert import convert_released_renderer, load_renderer
from tests.support.legacy_pickles import MODULE_SRC_TEMPLATE, ReducePayload, _Registry, _stand_in_modules
from tests.support.manifests import load_manifest

MANIFEST = "avatarartist-release/render_TriPlaneReconstructorNeutralize.json"


def tiny_release_tensors() -> tuple[list[tuple[str, list[int]]], list[tuple[str, str]]]:
    """The tiny renderer's names and shapes written the release's way: each 3-D conv weight also
    appears as ``<p>.weight`` (the same Parameter), listed first."""
    with torch.device("meta"):
        model = MotionAwareRenderer(RENDERER_PRESETS.get("tiny"))
    tensors, aliases = [], []
    for name, value in model.state_dict().items():
        if name.startswith("encoder_global_latent_tri.") and name.endswith(".conv.weight"):
            alias = name[: -len(".conv.weight")] + ".weight"
            tensors.append((alias, list(value.shape)))
            aliases.append((name, alias))
        tensors.append((name, list(value.shape)))
    return tensors, aliases


def build_renderer_pickle(path, tensors, aliases, *, marker, payload=None) -> dict[str, torch.Tensor]:
    """A ``{"G", "D", "G_ema"}`` network pickle of persistent-class stand-ins holding ``tensors``; tensor i
    is filled with the constant i + 1 (an alias shares its partner's Parameter). Returns the expected
    state (alias keys folded)."""
    registry = _Registry(MODULE_SRC_TEMPLATE.format(marker=str(marker), class_name="TriPlaneReconstructorNeutralize"))
    root = registry.persistent("TriPlaneReconstructorNeutralize", init_kwargs={"mot_dims": 548})
    modules: dict[str, nn.Module] = {"": root}

    def module(path: str) -> nn.Module:
        if path not in modules:
            parent_path, _, name = path.rpartition(".")
            child = registry.persistent("Module")
            module(parent_path).add_module(name, child)
            modules[path] = child
        return modules[path]

    alias_of = {alias: name for name, alias in aliases}
    values: dict[str, nn.Parameter] = {}
    order = [name for name, _ in tensors if name not in alias_of] + list(alias_of)
    shapes = dict(tensors)
    for index, name in enumerate(order):
        owner, _, leaf = name.rpartition(".")
        if name in alias_of:
            value = values[alias_of[name]]
        else:
            value = nn.Parameter(torch.full(shapes[name], float(index + 1)))
            values[name] = value
        module(owner).register_parameter(leaf, value)
    if payload is not None:
        root._payload = payload
    discriminator = registry.persistent("DualDiscriminator")
    with _stand_in_modules({**registry.all_globals(), **(payload.globals() if payload is not None else {})}):
        path.write_bytes(pickle.dumps({"G": root, "D": discriminator, "G_ema": root}))
    return {name: value.detach() for name, value in values.items()}


def test_a_tiny_release_pickle_converts_tensor_for_tensor_without_running_its_source(tmp_path):
    tensors, aliases = tiny_release_tensors()
    marker = tmp_path / "module_src_ran"
    expected = build_renderer_pickle(tmp_path / "render.pkl", tensors, aliases, marker=marker)
    info = convert_released_renderer(tmp_path / "render.pkl", tmp_path / "ckpt", preset="tiny")
    assert not marker.exists()
    assert info.metadata["source_class"] == "TriPlaneReconstructorNeutralize"
    renderer = load_renderer(tmp_path / "ckpt")
    state = renderer.state_dict()
    assert set(state) == set(expected) and len(aliases) == 8
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert len({float(v.flatten()[0]) for v in state.values()}) == len(state)  # every tensor its own


def test_a_payload_in_the_pickle_is_refused_and_never_runs(tmp_path, capsys):
    tensors, aliases = tiny_release_tensors()
    payload_marker = tmp_path / "payload_ran"
    build_renderer_pickle(tmp_path / "evil.pkl", tensors, aliases, marker=tmp_path / "src_ran",
                          payload=ReducePayload("builtins.exec", payload_marker))
    with pytest.raises(UnsafePickleError, match="exec"):
        convert_released_renderer(tmp_path / "evil.pkl", tmp_path / "out", preset="tiny")
    assert main(["convert", "avatarartist", "--render", str(tmp_path / "evil.pkl"), "--preset", "tiny",
                 "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("avatar4d: error:") and len(err.strip().splitlines()) == 1
    assert not payload_marker.exists() and not (tmp_path / "src_ran").exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()


def test_a_pickle_of_another_model_is_refused_in_one_line(tmp_path):
    tensors, aliases = tiny_release_tensors()
    build_renderer_pickle(tmp_path / "render.pkl", tensors[:-3], aliases, marker=tmp_path / "m")
    with pytest.raises(CheckpointError, match="3 missing"):
        convert_released_renderer(tmp_path / "render.pkl", tmp_path / "out", preset="tiny")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_full_size_release_converts_through_the_cli_and_loads_into_the_paper_preset(tmp_path, capsys):
    """A render.pkl with every name and shape of the manifest (266,615,896 parameters, 1.07 GB)."""
    manifest = load_manifest(MANIFEST)
    aliases = [tuple(pair) for pair in manifest["state_dict_aliases"]]
    tensors = [(name, shape) for name, shape in manifest["tensors"]]
    marker = tmp_path / "module_src_ran"
    expected = build_renderer_pickle(tmp_path / "render.pkl", tensors, aliases, marker=marker)
    assert main(["convert", "avatarartist", "--render", str(tmp_path / "render.pkl"), "--out",
                 str(tmp_path / "ckpt")]) == 0
    assert "motion-aware renderer" in capsys.readouterr().out and not marker.exists()
    renderer = load_renderer(tmp_path / "ckpt" / "renderer")
    assert sum(p.numel() for p in renderer.parameters()) == manifest["num_params"] == 266_615_896
    state = renderer.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
