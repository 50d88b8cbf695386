"""Which checkpoints make and render avatars: one resolver for every way a user names them.

``--checkpoints`` may be

1. a folder with ``pipeline.json`` (``{"dit": ..., "vae": ..., "generator": ..., "encoders": "tiny",
   "renderer": ...}``; relative paths are relative to the folder; any model may be an MLflow registry
   URI ``models:/NAME/VERSION``, resolved through ``MLFLOW_TRACKING_URI`` as MLflow does);
2. a folder with ``dit/`` and ``vae/`` (what ``avatar4d convert avatarartist --out DIR`` writes) and
   ``generator/`` (a converted Next3D++ GAN or a world checkpoint; or ``generators/`` holding several);
3. a trained DiT checkpoint (``runs/NAME/final``): its recorded config names the VAE it was trained
   with and the dataset, whose ``generators/`` folder holds the generators that made the data.

The image encoders are named by an ``ENCODER_PRESETS`` preset or a config dict; without one, the
preset whose token shapes fit the DiT is taken (``tiny`` or ``paper``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from avatar4d.checkpoint.io import CheckpointError, CheckpointInfo, read_checkpoint_info
from avatar4d.encoders import ENCODER_PRESETS, EncoderConfig
from avatar4d.errors import UserError
from avatar4d.generators import is_generator

logger = logging.getLogger(__name__)

MANIFEST = "pipeline.json"
MLFLOW_PREFIX = "models:/"


@dataclasses.dataclass
class PipelineCheckpoints:
    """Resolved local checkpoint folders and the encoder config."""

    dit: Path
    vae: Path
    generator: Path
    encoders: EncoderConfig
    renderer: Path | None = None
    source: str = ""

    def to_manifest(self) -> dict[str, Any]:
        return {"dit": str(self.dit), "vae": str(self.vae), "generator": str(self.generator),
                "encoders": self.encoders.to_dict(), "renderer": None if self.renderer is None else str(self.renderer)}


def _info(path: Path, what: str) -> CheckpointInfo:
    try:
        return read_checkpoint_info(path)
    except CheckpointError as exc:
        raise UserError(f"{what}: {exc}") from None


def from_mlflow(uri: str, cache: Path) -> Path:
    """The checkpoint folder of a registered avatar4d model (``models:/avatar4d-dit/3``), downloaded once."""
    import mlflow  # lazy: only users of the registry need it

    name = uri[len(MLFLOW_PREFIX):].strip("/").replace("/", "-")
    target = cache / name
    found = sorted(target.rglob("checkpoint.json")) if target.is_dir() else []
    if not found:  # downloaded once; a registered version never changes
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI or store
            store = os.environ.get("MLFLOW_TRACKING_URI", "(MLFLOW_TRACKING_URI not set)")
            raise UserError(f"cannot load {uri} from the MLflow registry at {store}: "
                            f"{str(exc).splitlines()[0][:160]}") from None
        found = sorted(local.rglob("checkpoint.json"))
        if not found:
            raise UserError(f"{uri} holds no avatar4d checkpoint (was it logged by `avatar4d train`?)")
    return found[0].parent


def _model_path(value: Any, root: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"{root / MANIFEST}: {what!r} must be a path or models:/NAME/VERSION")
    if value.startswith(MLFLOW_PREFIX):
        return from_mlflow(value, root / ".mlflow-models")
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _generator_in(folder: Path) -> Path | None:
    """The first generator checkpoint under ``folder`` (sorted by path), if any."""
    if not folder.is_dir():
        return None
    for info_file in sorted(folder.rglob("checkpoint.json")):
        try:
            if is_generator(read_checkpoint_info(info_file.parent)):
                return info_file.parent
        except CheckpointError:
            continue
    return None


def encoders_for_dit(dit_config: dict[str, Any]) -> EncoderConfig:
    """The encoder preset whose CLIP/DINO token shapes are the DiT's inputs."""
    wanted = ((dit_config.get("clip_tokens"), dit_config.get("clip_channels")),
              (dit_config.get("dino_tokens"), dit_config.get("dino_channels")))
    for name in ENCODER_PRESETS.names():
        config = ENCODER_PRESETS.get(name)
        if (tuple(config.clip.token_shape), tuple(config.dino.token_shape)) == wanted:
            return config
    raise UserError(f"no encoder preset makes the DiT's tokens (CLIP, DINO) {wanted}; name the encoders in "
                    f"{MANIFEST}")


def _encoders(value: Any, dit: Path) -> EncoderConfig:
    if value is None:
        return encoders_for_dit(_info(dit, "DiT").config)
    if isinstance(value, str):
        if value not in ENCODER_PRESETS:
            raise UserError(f"unknown encoder preset {value!r}; choose from {ENCODER_PRESETS.names()}")
        return ENCODER_PRESETS.get(value)
    if isinstance(value, dict):
        return EncoderConfig.from_dict(value)
    raise UserError(f"encoders must be a preset name or a config, got {type(value).__name__}")


def _check_component(path: Path, what: str) -> None:
    info = _info(path, what)
    fits = is_generator(info) if what == "generator" else info.component == {"dit": "dit", "vae": "triplane_vae"}[what]
    if not fits:
        raise UserError(f"{path} holds a {info.component} checkpoint, not the {what}")


def _from_folder(root: Path) -> tuple[Path, Path, Path, Any, Path | None, str]:
    """(dit, vae, generator, encoders setting, renderer, source) named by ``root``."""
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            document = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{manifest} is not valid JSON ({exc})") from None
        if not isinstance(document, dict):
            raise UserError(f"{manifest} must hold a JSON object")
        missing = [key for key in ("dit", "vae", "generator") if key not in document]
        if missing:
            raise UserError(f"{manifest} lacks {missing}")
        renderer = _model_path(document["renderer"], root, "renderer") if document.get("renderer") else None
        return (_model_path(document["dit"], root, "dit"), _model_path(document["vae"], root, "vae"),
                _model_path(document["generator"], root, "generator"), document.get("encoders"), renderer,
                str(manifest))
    if (root / "dit").is_dir() and (root / "vae").is_dir():
        generator = _generator_in(root / "generator") or _generator_in(root / "generators")
        if generator is None:
            raise UserError(f"{root} has dit/ and vae/ but no generator/ (the GAN or world that renders the "
                            f"parametric triplane; `avatar4d convert next3d-pkl ... --out {root}/generator`)")
        renderer = root / "renderer" if (root / "renderer").is_dir() else None
        return root / "dit", root / "vae", generator, None, renderer, str(root)
    info = _info(root, f"{root} is neither a folder with {MANIFEST} or dit/ + vae/, nor a DiT checkpoint")
    if info.component != "dit":
        raise UserError(f"{root} holds a {info.component} checkpoint; --checkpoints needs a DiT checkpoint, a "
                        f"folder with dit/ and vae/, or a {MANIFEST}")
    trained = info.metadata.get("config", {})
    vae, data = trained.get("vae_checkpoint"), trained.get("data")
    if not vae:
        raise UserError(f"the DiT at {root} does not record its VAE; write a {MANIFEST}")
    generator = _generator_in(Path(data) / "generators") if data else None
    if generator is None:
        raise UserError(f"no generator checkpoint under {data}/generators (the DiT's training data); write a "
                        f"{MANIFEST} naming one")
    return root, Path(vae), generator, None, None, str(root)


def resolve_checkpoints(spec: str | Path) -> PipelineCheckpoints:
    """Local checkpoint folders for ``spec`` (see the module docstring); one-line errors otherwise."""
    root = Path(spec).expanduser()
    if not root.exists():
        raise UserError(f"checkpoints not found: {spec}")
    if not root.is_dir():
        raise UserError(f"--checkpoints takes a folder, got the file {spec}")
    dit, vae, generator, encoders, renderer, source = _from_folder(root)
    for what, path in (("dit", dit), ("vae", vae), ("generator", generator)):
        _check_component(path, what)
    found = PipelineCheckpoints(dit=dit, vae=vae, generator=generator, encoders=_encoders(encoders, dit),
                                renderer=renderer, source=source)
    logger.info("checkpoints from %s: DiT %s, VAE %s, generator %s", found.source, found.dit, found.vae,
                found.generator)
    return found


def write_random_checkpoints(root: str | Path, *, domain: str = "pixar", seed: int = 0,
                             renderer: bool = False) -> Path:
    """Randomly initialised tiny checkpoints in the ``dit/ vae/ generator/ [renderer/]`` layout (the
    generator is the procedural world of ``domain``, exact; the DiT, VAE and renderer are untrained):
    what tests and benchmarks load when the point is the machinery, not what a model learned."""
    import torch

    from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT, save_dit
    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE
    from avatar4d.models.vae.convert import save_vae
    from avatar4d.world import WORLD_PRESETS, ProceduralWorldGenerator, save_world, style_for_domain

    root = Path(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        save_dit(root / "dit", ImageConditionedDiT(DIT_PRESETS.get("tiny")))
        save_vae(root / "vae", TriplaneVAE(VAE_PRESETS.get("tiny")))
        save_world(root / "generator", ProceduralWorldGenerator(WORLD_PRESETS.get("tiny",
                                                                                  style=style_for_domain(domain))))
        if renderer:
            from avatar4d.models.renderer import (
                MOTION_ENCODER_PRESETS,
                RENDERER_PRESETS,
                MotionAwareRenderer,
                MotionEncoder,
            )

            MotionAwareRenderer(RENDERER_PRESETS.get("tiny")).save_pretrained(root / "renderer")
            MotionEncoder(MOTION_ENCODER_PRESETS.get("tiny")).save_pretrained(root / "renderer" / "motion_encoder")
    return root
