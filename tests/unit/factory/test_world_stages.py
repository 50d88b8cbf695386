"""The factory's stages host the procedural world like a GAN: rows say so, and a row's mesh is its head."""

import pytest
import torch

from avatar4d.data import decode_png, decode_tensor, tensor_spec
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams, default_head_model
from factory.chunks import Chunk
from factory.domains import load_domains
from factory.generators import ensure_domain_generator
from factory.stages import MultiviewConfig, MultiviewStage, SynthesizeConfig, SynthesizeStage

RUN_SEED = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return ensure_domain_generator(load_domains().get("pixar"), tmp_path_factory.mktemp("world"), "tiny", "world")


def test_pairs_are_world_rows_whose_mesh_is_the_painted_head(checkpoint):
    stage = SynthesizeStage("pixar", checkpoint, SynthesizeConfig(batch_size=4))
    batch = stage(Chunk("pairs", "pixar", "pairs", 0, 0, 4, RUN_SEED))
    rows = batch.to_pylist()
    assert {r["generator_kind"] for r in rows} == {"world"}
    head = default_head_model()
    spec = tensor_spec(batch.schema, "triplane")
    for row in rows:
        w, params = torch.tensor(row["w"]), torch.tensor(row["face_params"])
        assert torch.allclose(params[:head.identity_dim], w[:head.identity_dim]), "the row's mesh is w's identity"
        # rendering the stored triplane with the row's mesh and camera gives the stored image
        face = FaceParams.from_vector(params[None], head.identity_dim, head.expression_dim)
        planes = stage.generator.parametric_triplane(w[None, None])[0].stacked()
        assert torch.allclose(decode_tensor(row["triplane"], spec).float(), planes[0], atol=2e-2)
        with torch.no_grad():
            out = stage.generator.synthesis(w[None, None], Camera.from_label(torch.tensor(row["camera"])[None]),
                                            head.vertices(face))
        image = decode_png(row["image"]).float() / 127.5 - 1
        assert (image - out.image[0]).abs().mean() < 0.02
    assert stage.regenerate(2, rows[2]["seed"])["image"] == rows[2]["image"], "rows re-generate bit for bit"


def test_multiview_identities_keep_their_head_across_expressions(checkpoint):
    stage = MultiviewStage("pixar", checkpoint, MultiviewConfig(expressions=3, cameras=2, batch_size=3))
    row = stage(Chunk("multiview", "pixar", "dynamic", 0, 0, 1, RUN_SEED)).to_pylist()[0]
    assert row["generator_kind"] == "world"
    identity_dim = default_head_model().identity_dim
    identities = torch.tensor([view["face_params"][:identity_dim] for view in row["views"]])
    assert torch.equal(identities, identities[:1].expand_as(identities))
    assert torch.allclose(identities[0], torch.tensor(row["w"][:identity_dim]))
    opacity = [decode_tensor(v["opacity"], stage.depth_spec) for v in row["views"]]
    assert all(0.2 < float(o.float().mean()) < 0.9 for o in opacity), "every view shows a head"
