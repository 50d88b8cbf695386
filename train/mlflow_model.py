"""The MLflow pyfunc of a trained avatar4d model, logged as "models from code" (MLflow 3).

MLflow copies this file into the logged model and runs it on load; the avatar4d core package
travels with it as ``code_paths`` (torch + numpy + safetensors only), the weights as the artifact
``checkpoint`` (our checkpoint folder: ``model.safetensors`` + ``config.json`` + ``checkpoint.json``).
So ``mlflow.pyfunc.load_model("models:/avatar4d-vae/1").predict(...)`` works in any environment with
the logged requirements, without this repository.

Inputs and outputs (float32 numpy arrays; the signature records the shapes):

- ``triplane_vae``: ``{"triplane": [B, F, C, R, R]}`` (data units) → ``{"latent": [B, E, F, r, r]``
  (posterior mean), ``"reconstruction": [B, F, C, R, R]}``;
- ``motion_aware_renderer``: ``{"source_image": [B, 3, S, S], "triplane": [B, 4, C, R, R], "motion" and
  "source_motion": [B, D], "face_params": [B, P] (target expression), "camera": [B, 25]}`` → ``{"image",
  "image_raw", "depth", "opacity"}``;
- ``dit``: ``{"latent": [B, C, H, W], "timestep": [B], "clip_tokens": [B, Tc, Dc], "dino_tokens":
  [B, Td, Dd]}`` → ``{"prediction": [B, 2·C, H, W]}`` (ε and the learned-variance channels);
- ``next3d_generator`` (a fine-tuned domain GAN): ``{"z": [B, z_dim], "camera": [B, 25] (EG3D label),
  "face_params": [B, D] (coefficients of the procedural head)}`` → ``{"image": [B, 3, S, S]}`` in
  [-1, 1] (truncation ψ 0.7).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np

CHECKPOINT_ARTIFACT = "checkpoint"


def _arrays(model_input: Any) -> dict[str, np.ndarray]:
    if isinstance(model_input, dict):
        return {k: np.asarray(v, dtype=np.float32) for k, v in model_input.items()}
    if isinstance(model_input, np.ndarray):
        return {"triplane": model_input.astype(np.float32)}
    raise TypeError(f"expected a dict of arrays, got {type(model_input).__name__}")


class Avatar4dModel(mlflow.pyfunc.PythonModel):
    """Loads an avatar4d checkpoint with ``from_pretrained`` and calls it on numpy inputs."""

    def load_context(self, context: Any) -> None:
        from avatar4d.checkpoint.io import read_checkpoint_info

        path = context.artifacts[CHECKPOINT_ARTIFACT]
        self.component = read_checkpoint_info(path).component
        if self.component == "triplane_vae":
            from avatar4d.models.vae import TriplaneVAE as model_class
        elif self.component == "dit":
            from avatar4d.models.dit import ImageConditionedDiT as model_class
        elif self.component == "next3d_generator":
            from avatar4d.geometry.morphable import default_head_model
            from avatar4d.models.next3d import Next3DGenerator as model_class

            self.head = default_head_model()
        elif self.component == "motion_aware_renderer":
            from avatar4d.geometry.morphable import default_head_model
            from avatar4d.models.renderer import MotionAwareRenderer as model_class

            self.head = default_head_model()
        else:
            raise ValueError(f"no pyfunc for {self.component!r} checkpoints")
        self.model = model_class.from_pretrained(path).eval()

    # `np.ndarray` is one of the hints MLflow takes without inferring a schema from it (the logged
    # signature is the schema); the input may also be a dict of arrays
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
                ) -> dict[str, np.ndarray]:
        import torch

        inputs = {k: torch.from_numpy(v) for k, v in _arrays(model_input).items()}
        with torch.no_grad():
            if self.component == "triplane_vae":
                latent = self.model.encode_triplane(inputs["triplane"])
                return {"latent": latent.numpy(), "reconstruction": self.model.decode_triplane(latent).numpy()}
            if self.component == "next3d_generator":
                from avatar4d.geometry.camera import Camera
                from avatar4d.geometry.morphable import FaceParams

                params = FaceParams.from_vector(inputs["face_params"], self.head.identity_dim, self.head.expression_dim)
                out = self.model(inputs["z"], Camera.from_label(inputs["camera"]), self.head.vertices(params),
                                 truncation_psi=0.7)
                return {"image": out.image.numpy()}
            if self.component == "motion_aware_renderer":
                from avatar4d.geometry.morphable import FaceParams

                params = FaceParams.from_vector(inputs["face_params"], self.head.identity_dim, self.head.expression_dim)
                out = self.model(inputs["source_image"], inputs["triplane"], inputs["motion"],
                                 self.head.vertices(params), inputs["camera"], source_motion=inputs["source_motion"])
                return {key: out[key].numpy() for key in ("image", "image_raw", "depth", "opacity")}
            prediction = self.model(inputs["latent"], inputs["timestep"], inputs["clip_tokens"],
                                    inputs["dino_tokens"])
            return {"prediction": prediction.numpy()}


mlflow.models.set_model(Avatar4dModel())
