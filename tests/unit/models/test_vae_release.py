"""Release compatibility of the triplane VAE: paper preset vs the manifest, converter, file loading."""

import pytest
import torch

from avatar4d.checkpoint import CheckpointError
from avatar4d.models.vae import (
    VAE_PRESETS,
    TriplaneVAE,
    convert_released_vae,
    convert_released_vae_checkpoint,
    from_dit_tokens,
    load_released_vae_file,
    load_vae,
    release_statistics,
    save_vae,
    to_dit_tokens,
    to_released_vae_state_dict,
)
from avatar4d.models.vae.layers import SamePadConv3d
from tests.support.manifests import load_manifest

MANIFEST = "avatarartist-release/vae_AutoencoderKL_triplane.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest(MANIFEST)


@pytest.fixture(scope="module")
def paper() -> TriplaneVAE:
    with torch.device("meta"):
        return TriplaneVAE(VAE_PRESETS.get("paper"))


def _tiny(seed: int = 0) -> TriplaneVAE:
    torch.manual_seed(seed)
    return TriplaneVAE(VAE_PRESETS.get("tiny"))


def _release_style(vae: TriplaneVAE, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """What the release's AutoencoderKL.state_dict() would hold for these weights (aliases share tensors)."""
    return to_released_vae_state_dict({k: v.detach().to(dtype) for k, v in vae.state_dict().items()})


def test_paper_parameter_counts_equal_the_manifest(paper, manifest):
    assert sum(p.numel() for p in paper.parameters()) == manifest["num_params"] == 310_273_544
    for name, count in manifest["num_params_by_top_level_module"].items():
        assert sum(p.numel() for p in getattr(paper, name).parameters()) == count, name
    # no Parameter is registered twice (the release's alias quirk)
    assert len(list(paper.parameters())) == len(paper.state_dict()) == 96


def test_paper_latent_is_the_configured_compression(paper, manifest):
    shapes = manifest["forward_shape_check"]
    x = torch.empty(shapes["input_triplane_b_c_f_h_w"], device="meta")
    posterior = paper.encode(x)
    assert list(posterior.moments.shape) == shapes["moments_after_quant_conv"] == [1, 16, 4, 32, 32]
    out = paper(x)
    assert list(out.latent.shape) == shapes["latent_z"] == [1, 8, 4, 32, 32]
    assert list(out.reconstruction.shape) == shapes["decoded"] == [1, 32, 4, 256, 256]
    assert list(to_dit_tokens(out.latent).shape) == shapes["inference_dit_sample"] == [1, 8, 128, 32]
    assert list(from_dit_tokens(to_dit_tokens(out.latent)).shape) == shapes["inference_rearranged_for_decode"]
    assert paper.decode(out.latent).device.type == "meta"


def test_paper_keys_match_the_manifest_after_alias_folding(paper, manifest):
    release_keys = [(k, tuple(s)) for k, s in manifest["tensors"]]
    assert len(release_keys) == manifest["num_state_dict_keys"] == 122
    aliases = {alias: first for alias, first in manifest["state_dict_aliases"]}
    assert len(aliases) == 26
    ours = {k: tuple(v.shape) for k, v in paper.state_dict().items()}
    # our keys = release keys minus one name of each alias pair, with the same shapes
    folded = {k: s for k, s in release_keys if not (k.endswith(".weight") and k[:-7] + ".conv.weight" in aliases)}
    assert ours == folded
    # exporting ours back to release names reproduces the manifest exactly, in state_dict order
    exported = to_released_vae_state_dict(paper.state_dict())
    assert [(k, tuple(v.shape)) for k, v in exported.items()] == release_keys
    for alias, first in aliases.items():
        assert exported[alias] is exported[first]


def test_manifest_state_dict_converts_and_loads_strictly(manifest):
    # Shapes of the full 310M-parameter release on the meta device, fp16 as the release may store it,
    # each alias key holding the SAME tensor as its partner.
    released = {}
    for key, shape in manifest["tensors"]:
        released[key] = torch.empty(shape, dtype=torch.float16, device="meta")
    for alias, first in manifest["state_dict_aliases"]:
        released[alias] = released[first]
    converted = convert_released_vae(released)
    assert len(converted) == 96 and {v.dtype for v in converted.values()} == {torch.float32}
    with torch.device("meta"):
        vae = TriplaneVAE(VAE_PRESETS.get("paper"))
    result = vae.load_state_dict(converted, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_release_style_weights_transfer_values_on_tiny():
    source = _tiny(seed=1)
    released = _release_style(source)
    same_pad_convs = sum(isinstance(module, SamePadConv3d) for module in source.modules())
    assert same_pad_convs == 15  # tiny: 8 in the encoder, 5 in the decoder, 2 quant convs (the release has 26)
    assert len(released) == len(source.state_dict()) + same_pad_convs  # one weight alias per SamePadConv3d
    converted = convert_released_vae(released)
    target = _tiny(seed=2)
    result = target.load_state_dict(converted, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in source.state_dict().items():
        assert converted[key].dtype == torch.float32
        torch.testing.assert_close(target.state_dict()[key], value.half().float(), rtol=0, atol=0)
    x = torch.randn(1, 8, 4, 8, 8)
    torch.testing.assert_close(target(x, sample_posterior=False).reconstruction,
                               source.half().float()(x, sample_posterior=False).reconstruction)


def test_alias_pair_with_different_values_is_rejected():
    released = _release_style(_tiny())
    released["encoder.conv_first.weight"] = released["encoder.conv_first.weight"] + 1
    with pytest.raises(CheckpointError, match="encoder.conv_first.weight"):
        convert_released_vae(released)
    released = _release_style(_tiny())
    released["quant_conv.weight"] = released["quant_conv.weight"][:1]
    with pytest.raises(CheckpointError, match="differ"):
        convert_released_vae(released)


def test_wrapper_prefix_and_non_tensors():
    released = _release_style(_tiny())
    wrapped = {f"module.{k}": v for k, v in released.items()}
    assert convert_released_vae(wrapped).keys() == convert_released_vae(released).keys()
    mixed = {**released, "module.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="module."):
        convert_released_vae(mixed)
    with pytest.raises(CheckpointError, match="not a tensor"):
        convert_released_vae({**released, "epoch": 3})


def test_load_released_file(tmp_path):
    source = _tiny(seed=3)
    path = tmp_path / "pytorch_model.bin"
    torch.save({f"module.{k}": v for k, v in _release_style(source).items()}, path)
    weights = load_released_vae_file(path)
    assert weights.keys() == source.state_dict().keys()
    assert weights["decoder.conv_out.conv.weight"].dtype == torch.float32
    torch.save({"state_dict": _release_style(source), "epoch": 1}, tmp_path / "wrapped.bin")
    assert load_released_vae_file(tmp_path / "wrapped.bin").keys() == weights.keys()
    torch.save([1, 2, 3], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_released_vae_file(tmp_path / "list.bin")
    (tmp_path / "garbage.bin").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.bin"):
        load_released_vae_file(tmp_path / "garbage.bin")
    with pytest.raises(CheckpointError, match="not found"):
        load_released_vae_file(tmp_path / "missing.bin")


def test_release_statistics_broadcast_over_planes():
    assert release_statistics(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [[1.0], [2.0], [3.0], [4.0]]
    assert release_statistics(torch.tensor(0.5)).shape == (1, 1)
    with pytest.raises(ValueError, match="plane axis"):
        release_statistics(torch.zeros(32))


def test_convert_released_checkpoint_and_reload(tmp_path):
    source = _tiny(seed=4)
    path = tmp_path / "pytorch_model.bin"
    torch.save(_release_style(source, dtype=torch.float32), path)
    info = convert_released_vae_checkpoint(path, tmp_path / "vae", preset="tiny",
                                           mean=torch.tensor([0.0, 1.0, 2.0, 3.0]), std=torch.tensor(2.0))
    assert info.metadata["source_file"] == "pytorch_model.bin"
    vae, info = load_vae(tmp_path / "vae")
    assert vae.config.normalize_triplanes and vae.triplane_mean[3].tolist() == [3.0] * 8
    assert torch.equal(vae.triplane_std, torch.full((4, 8), 2.0))
    torch.testing.assert_close(vae.decoder.conv_out.conv.weight, source.decoder.conv_out.conv.weight)
    save_vae(tmp_path / "again", vae, step=7)
    again, info = load_vae(tmp_path / "again")
    assert info.step == 7 and torch.equal(again.triplane_mean, vae.triplane_mean)
    with pytest.raises(CheckpointError, match="do not fit"):
        convert_released_vae_checkpoint(path, tmp_path / "wrong", preset="paper")
