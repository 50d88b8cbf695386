"""Issue 9 in the factory: the mapping is conditioned on one frontal camera (AvatarArtist's data
generation; the rendering camera stays selectable), and datasets written before the camera change
are refused with a clear message instead of being mixed with new rows."""

import pyarrow as pa
import pytest
import torch

from avatar4d.data.schema import (
    CAMERA_CONVENTION,
    META_CAMERA_CONVENTION,
    SchemaMismatchError,
    dataset_uri,
    schema_metadata,
)
from avatar4d.geometry.camera import Camera
from factory.chunks import Chunk
from factory.domains import load_domains
from factory.generators import ensure_domain_generator
from factory.stages import SynthesizeConfig, SynthesizeStage


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return ensure_domain_generator(load_domains().get("lego"), tmp_path_factory.mktemp("generators"))


def _mapped(stage: SynthesizeStage, z: torch.Tensor, camera: Camera) -> torch.Tensor:
    cfg = stage.config
    with torch.no_grad():
        return stage.generator.mapping(z, camera, truncation_psi=cfg.truncation_psi,
                                       truncation_cutoff=stage.truncation_cutoff)[:, 0]


def test_the_mapping_sees_the_frontal_camera_by_default(checkpoint):
    frontal = SynthesizeStage("lego", checkpoint, SynthesizeConfig(batch_size=2))
    assert frontal.config.conditioning == "frontal"
    samples = frontal.generate([0, 1], [5, 6])
    z, cameras = samples.draws.z, Camera.from_label(samples.draws.camera)
    assert not torch.allclose(cameras.cam2world[0], cameras.cam2world[1])  # two different views
    torch.testing.assert_close(samples.w, _mapped(frontal, z, frontal.pose_sampler.frontal(2)), rtol=1e-5, atol=1e-5)
    assert (samples.w - _mapped(frontal, z, cameras)).abs().max() > 1e-4  # not the rendering camera's w
    rendering = SynthesizeStage("lego", checkpoint, SynthesizeConfig(batch_size=2, conditioning="render"))
    torch.testing.assert_close(rendering.generate([0, 1], [5, 6]).w, _mapped(rendering, z, cameras),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="conditioning"):
        SynthesizeConfig(conditioning="side")


def test_a_dataset_from_before_the_camera_change_is_refused(checkpoint, tmp_path):
    from factory.sink import LanceCommitter, write_fragments

    stage = SynthesizeStage("lego", checkpoint, SynthesizeConfig(batch_size=2))
    assert schema_metadata(stage.schema)[META_CAMERA_CONVENTION] == CAMERA_CONVENTION
    chunk = Chunk("pairs", "lego", "pairs", 0, 0, 2, 3)
    batch = stage(chunk)
    old_meta = {k: v for k, v in (stage.schema.metadata or {}).items() if k.decode() != META_CAMERA_CONVENTION}
    old_schema = stage.schema.with_metadata(old_meta)  # what the factory wrote before issue 9
    uri = dataset_uri(str(tmp_path), "pairs")
    LanceCommitter(uri, old_schema).commit([chunk.chunk_id], write_fragments(
        uri, pa.RecordBatch.from_arrays(batch.columns, schema=old_schema), old_schema))
    with pytest.raises(SchemaMismatchError, match="written before the camera change"):
        LanceCommitter(uri, stage.schema)
    # a factory run checks it before any worker starts, ahead of the settings fingerprint
    from factory.guards import check_stored_fingerprints
    from factory.recipes import tiny

    with pytest.raises(SchemaMismatchError, match="pairs.lance was written before the camera change"):
        check_stored_fingerprints(tiny().replace(out=str(tmp_path)), {}, {"pairs": {chunk.chunk_id}})
