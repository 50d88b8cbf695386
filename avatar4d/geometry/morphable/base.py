"""The morphable head model interface shared by the procedural head, FLAME and FaceVerse.

A morphable model maps typed coefficients (:class:`FaceParams`: identity, expression, jaw
rotation) to mesh vertices ``[B, V, 3]`` in the world frame of :mod:`avatar4d.geometry.camera`
(head looks along +z, y up). Topology (``faces``), the UV atlas (``uv_coords``/``uv_faces``)
and the 68 iBUG landmark vertices are fixed per model.

Conventions:
- ``faces`` wind counter-clockwise seen from outside: ``(v1 - v0) x (v2 - v0)`` points outward.
- ``uv_faces`` index ``uv_coords`` per face, so seams can split UVs; ``v`` grows upwards
  (OpenGL / OBJ convention), and UV triangles have positive signed area.
- Left/right are the subject's: the left eye is at +x (image right for a frontal camera).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 68
JAW_DIM = 3


@dataclasses.dataclass
class FaceParams:
    """Coefficients of a morphable model for a batch of faces.

    identity: [B, Ni] shape coefficients; expression: [B, Ne] expression coefficients;
    jaw: [B, 3] axis-angle rotation of the jaw (radians; x > 0 opens the mouth), may be zeros.
    """

    identity: Tensor
    expression: Tensor
    jaw: Tensor

    def __post_init__(self) -> None:
        for name in ("identity", "expression", "jaw"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise ValueError(f"FaceParams.{name} must be a tensor, got {type(value).__name__}")
            if value.ndim != 2:
                raise ValueError(f"FaceParams.{name} must be [B, D], got shape {tuple(value.shape)}")
        if self.jaw.shape[1] != JAW_DIM:
            raise ValueError(f"FaceParams.jaw must be [B, 3] axis-angle, got {tuple(self.jaw.shape)}")
        sizes = {self.identity.shape[0], self.expression.shape[0], self.jaw.shape[0]}
        if len(sizes) != 1:
            raise ValueError(f"FaceParams batch sizes differ: identity {self.identity.shape[0]}, "
                             f"expression {self.expression.shape[0]}, jaw {self.jaw.shape[0]}")

    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    @property
    def identity_dim(self) -> int:
        return self.identity.shape[1]

    @property
    def expression_dim(self) -> int:
        return self.expression.shape[1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FaceParams:
        return FaceParams(*(t.to(device=device, dtype=dtype) for t in (self.identity, self.expression, self.jaw)))

    @staticmethod
    def vector_dim(identity_dim: int, expression_dim: int) -> int:
        """Length of :meth:`to_vector`: identity, then expression, then the 3 jaw values."""
        return identity_dim + expression_dim + JAW_DIM

    def to_vector(self) -> Tensor:
        """[B, Ni + Ne + 3]: identity ++ expression ++ jaw (the per-row stored coefficients)."""
        return torch.cat([self.identity, self.expression, self.jaw], dim=-1)

    @classmethod
    def from_vector(cls, vector: Tensor, identity_dim: int, expression_dim: int) -> FaceParams:
        """Inverse of :meth:`to_vector`; accepts [D] or [B, D] with D = Ni + Ne + 3."""
        if vector.ndim == 1:
            vector = vector[None]
        expected = cls.vector_dim(identity_dim, expression_dim)
        if vector.ndim != 2 or vector.shape[1] != expected:
            raise ValueError(f"FaceParams vector must be [B, {expected}] for identity_dim={identity_dim}, "
                             f"expression_dim={expression_dim}; got {tuple(vector.shape)}")
        identity, expression, jaw = torch.split(vector, [identity_dim, expression_dim, JAW_DIM], dim=-1)
        return cls(identity=identity, expression=expression, jaw=jaw)

    @classmethod
    def zeros(cls, batch_size: int, identity_dim: int, expression_dim: int, *,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> FaceParams:
        return cls(identity=torch.zeros(batch_size, identity_dim, device=device, dtype=dtype),
                   expression=torch.zeros(batch_size, expression_dim, device=device, dtype=dtype),
                   jaw=torch.zeros(batch_size, JAW_DIM, device=device, dtype=dtype))


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from axis-angle vectors [..., 3] (Rodrigues; smooth at 0)."""
    angle_sq = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    angle = angle_sq.clamp_min(1e-12).sqrt()
    small = angle_sq < 1e-8
    sin_term = torch.where(small, 1.0 - angle_sq / 6.0, torch.sin(angle) / angle)
    cos_term = torch.where(small, 0.5 - angle_sq / 24.0, (1.0 - torch.cos(angle)) / angle_sq.clamp_min(1e-12))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + sin_term * skew + cos_term * (skew @ skew)


def blendshape_offsets(basis: Tensor, coefficients: Tensor) -> Tensor:
    """Offsets [B, V, 3] of a linear basis [V, 3, K] weighted by coefficients [B, K]."""
    num_vertices = basis.shape[0]
    flat = basis.reshape(num_vertices * 3, basis.shape[2])  # [V*3, K]
    return (coefficients @ flat.T).reshape(coefficients.shape[0], num_vertices, 3)


class ModelConstant:
    """A read-only model attribute backed by the constant ``_<name>`` (registered by
    :meth:`MorphableModel.register_topology`). Reading it when the model file had none raises
    ValueError with the message in the model's class attribute named by ``missing``."""

    def __init__(self, doc: str, missing: str | None = None) -> None:
        self.__doc__, self._missing = doc, missing

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, model: None, owner: type | None = None) -> ModelConstant: ...

    @overload
    def __get__(self, model: MorphableModel, owner: type | None = None) -> Tensor: ...

    def __get__(self, model: MorphableModel | None, owner: type | None = None) -> Tensor | ModelConstant:
        if model is None:
            return self
        value = getattr(model, f"_{self._name}")
        if value is None:
            message = getattr(model, self._missing) if self._missing else ""
            raise ValueError(message or f"{type(model).__name__} has no {self._name}")
        return value

    def __set__(self, model: MorphableModel, value: Any) -> None:
        raise AttributeError(f"{self._name} is read-only; models set it with register_topology()")


def default_expression_names(count: int) -> list[str]:
    """``expression_000``, ``expression_001``...: names of an unnamed expression basis."""
    return [f"expression_{k:03d}" for k in range(count)]


class MorphableModel(nn.Module):
    """Morphable head model: a linear shape space (template + identity + expression blendshapes)
    plus fixed topology, UVs and landmarks, all held as constants (``.to`` works).

    Subclasses call :meth:`register_shape_space` and :meth:`register_topology` in ``__init__``
    and override :meth:`vertices` when they add more than the blendshape sum (a jaw joint...).
    """

    template: Tensor  # [V, 3]
    identity_basis: Tensor  # [V, 3, Ni]
    expression_basis: Tensor  # [V, 3, Ne]
    expression_names: list[str]
    supports_jaw: bool = True  # whether FaceParams.jaw moves vertices (FaceVerse has no jaw joint)
    missing_uv_message: str = ""  # ValueError message when the model was loaded without UVs
    missing_landmarks_message: str = ""  # ... without landmarks

    faces = ModelConstant("LongTensor [F, 3], counter-clockwise seen from outside.")
    uv_coords = ModelConstant("[T, 2] float UV coordinates in [0, 1] (v up).", missing="missing_uv_message")
    uv_faces = ModelConstant("LongTensor [F, 3] indices into ``uv_coords``, one triangle per face.",
                             missing="missing_uv_message")
    landmark_indices = ModelConstant("LongTensor [68] vertex indices in the iBUG-68 layout.",
                                     missing="missing_landmarks_message")

    def register_constant(self, name: str, value: Tensor | None) -> None:
        """A non-persistent buffer: it follows ``.to()`` but stays out of ``state_dict`` (model data
        is rebuilt from its builder or file, and licensed FLAME/FaceVerse data never ends up in
        our checkpoints)."""
        self.register_buffer(name, value, persistent=False)

    def register_shape_space(self, template: np.ndarray, identity_basis: np.ndarray,
                             expression_basis: np.ndarray) -> None:
        """Register the linear shape model as float32 constants: template [V, 3], identity basis
        [V, 3, Ni] and expression basis [V, 3, Ne]."""
        num_vertices = template.shape[0]
        for name, value in (("identity_basis", identity_basis), ("expression_basis", expression_basis)):
            if value.ndim != 3 or value.shape[:2] != (num_vertices, 3):
                raise ValueError(f"{name} must be [{num_vertices}, 3, K], got {value.shape}")
        for name, value in (("template", template), ("identity_basis", identity_basis),
                            ("expression_basis", expression_basis)):
            self.register_constant(name, torch.tensor(value, dtype=torch.float32))

    def register_topology(self, faces: np.ndarray, *, uv: tuple[np.ndarray, np.ndarray] | None = None,
                          landmark_indices: np.ndarray | None = None) -> None:
        """Register faces [F, 3], the UV atlas (uv_coords [T, 2], uv_faces [F, 3]) and the landmark
        vertex indices [68]; a missing atlas or landmark set reads as the model's missing message."""
        uv_coords, uv_faces = uv if uv is not None else (None, None)
        for name, value, dtype in (("_faces", faces, torch.long), ("_uv_coords", uv_coords, torch.float32),
                                   ("_uv_faces", uv_faces, torch.long),
                                   ("_landmark_indices", landmark_indices, torch.long)):
            self.register_constant(name, None if value is None else torch.tensor(value, dtype=dtype))

    def uv_image_builder(self, view: Any, resolution: int, backend: str = "auto") -> Any:
        """The :class:`~avatar4d.geometry.uv_image.UVImageBuilder` that turns this head's vertices into the
        UV-coordinate image a Next3D-style generator is conditioned on: by default the UV atlas
        rasterized through ``view`` (an :class:`~avatar4d.geometry.raster.OrthographicView` of the face
        box) with coverage alpha (:class:`~avatar4d.geometry.uv_image.CoverageUVImage`). Head models
        with an official construction (FaceVerse v3) override it."""
        from avatar4d.geometry.uv_image import CoverageUVImage

        return CoverageUVImage(self.faces, self.uv_coords, self.uv_faces, self.num_vertices, view, resolution,
                               backend)

    num_vertices = property(lambda self: self.template.shape[0], doc="V, the number of mesh vertices.")
    identity_dim = property(lambda self: self.identity_basis.shape[2], doc="Ni, the identity coefficients.")
    expression_dim = property(lambda self: self.expression_basis.shape[2], doc="Ne, the expression coefficients.")

    @property
    def device(self) -> torch.device:
        return self.faces.device

    @property
    def float_dtype(self) -> torch.dtype:
        """Dtype of the model's floating-point buffers (follows ``.to(dtype)``)."""
        return next((b.dtype for b in self.buffers() if b.is_floating_point()), torch.float32)

    # --- evaluation ------------------------------------------------------------------------
    def prepare_params(self, params: FaceParams) -> FaceParams:
        """``params`` checked against this model and moved to its device and float dtype."""
        self.check_params(params)
        return params.to(self.template.device, self.template.dtype)

    def blend_shapes(self, params: FaceParams) -> Tensor:
        """[B, V, 3] template + identity + expression blendshapes of prepared ``params``."""
        return (self.template[None]  # [1, V, 3]
                + blendshape_offsets(self.identity_basis, params.identity)  # [B, V, 3]
                + blendshape_offsets(self.expression_basis, params.expression))

    def vertices(self, params: FaceParams) -> Tensor:
        """Mesh vertices [B, V, 3] for the given coefficients (here: the blendshape sum)."""
        return self.blend_shapes(self.prepare_params(params))

    def landmarks(self, vertices: Tensor) -> Tensor:
        """[B, 68, 3] landmark positions of vertices [B, V, 3]."""
        if vertices.ndim != 3 or vertices.shape[1] != self.num_vertices:
            raise ValueError(f"landmarks: expected vertices [B, {self.num_vertices}, 3], "
                             f"got {tuple(vertices.shape)}")
        return vertices[:, self.landmark_indices.to(vertices.device)]

    def neutral_params(self, batch_size: int = 1) -> FaceParams:
        """All-zero coefficients: the mean identity with a neutral expression and closed jaw."""
        return FaceParams.zeros(batch_size, self.identity_dim, self.expression_dim,
                                device=self.device, dtype=self.float_dtype)

    def random_params(self, batch_size: int, *, generator: torch.Generator | None = None,
                      identity_scale: float = 1.0, expression_scale: float = 0.5,
                      jaw_max: float = 0.2) -> FaceParams:
        """Gaussian identity/expression coefficients and a jaw opening in [0, jaw_max] rad (seeded
        through ``generator``; drawn on the CPU and moved to the model's device)."""
        identity = torch.randn(batch_size, self.identity_dim, generator=generator) * identity_scale
        expression = torch.randn(batch_size, self.expression_dim, generator=generator) * expression_scale
        jaw = torch.zeros(batch_size, JAW_DIM)
        if self.supports_jaw:
            jaw[:, 0] = torch.rand(batch_size, generator=generator) * jaw_max
        return FaceParams(identity, expression, jaw).to(self.device, self.float_dtype)

    def expression_index(self, name: str) -> int:
        """Column of a named expression in ``FaceParams.expression``."""
        if name not in self.expression_names:
            raise ValueError(f"unknown expression {name!r}; choose from {self.expression_names}")
        return self.expression_names.index(name)

    def check_params(self, params: FaceParams) -> None:
        """Raise ValueError if ``params`` do not match this model's dimensions."""
        if params.identity_dim != self.identity_dim or params.expression_dim != self.expression_dim:
            raise ValueError(f"{type(self).__name__} expects identity_dim={self.identity_dim}, "
                             f"expression_dim={self.expression_dim}; got {params.identity_dim}, "
                             f"{params.expression_dim}")


def orient_faces_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces`` [F, 3], with every triangle's winding reversed if the mesh as a whole winds
    inwards (area-weighted normals pointing towards the centroid; works for closed heads and for
    open face masks). Assumes the winding is consistent across the mesh."""
    corners = vertices[faces]  # [F, 3, 3]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    outwardness = np.sum((corners.mean(axis=1) - vertices.mean(axis=0)) * normals)
    if outwardness < 0:
        logger.info("faces wind inwards; reversing the winding of all %d faces", len(faces))
        return faces[:, [0, 2, 1]]
    return faces


def save_obj(path: str | Path, vertices: Tensor, faces: Tensor, uv_coords: Tensor | None = None,
             uv_faces: Tensor | None = None) -> None:
    """Write one mesh (vertices [V, 3], faces [F, 3], optional UVs) as a Wavefront OBJ."""
    if (uv_coords is None) != (uv_faces is None):
        raise ValueError("save_obj: give both uv_coords and uv_faces, or neither")
    if vertices.ndim == 3:
        if vertices.shape[0] != 1:
            raise ValueError(f"save_obj writes one mesh; got a batch of {vertices.shape[0]}")
        vertices = vertices[0]
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices.detach().cpu().tolist()]
    face_rows = (faces.detach().cpu() + 1).tolist()
    if uv_coords is not None and uv_faces is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv_coords.detach().cpu().tolist()]
        uv_rows = (uv_faces.detach().cpu() + 1).tolist()
        for corners, uv_corners in zip(face_rows, uv_rows, strict=True):
            lines.append("f " + " ".join(f"{a}/{t}" for a, t in zip(corners, uv_corners, strict=True)))
    else:
        lines += ["f " + " ".join(str(a) for a in f) for f in face_rows]
    Path(path).write_text("\n".join(lines) + "\n")
