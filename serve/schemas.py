"""HTTP schemas of the v1 API (pydantic; FastAPI publishes them in /openapi.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class CameraSpec(BaseModel):
    """An orbit camera around the head, in degrees (yaw > 0 turns to the head's left)."""

    model_config = STRICT
    yaw: float = Field(0.0, ge=-90, le=90)
    pitch: float = Field(0.0, ge=-60, le=60)


class DrivingSpec(BaseModel):
    """A built-in preset (``talk``, ``smile``, ``blink``, ``surprise``, ``neutral``) over ``frames`` frames, or
    per-frame expression coefficients [frames][Ne] with optional jaw rotations [frames][3]."""

    model_config = STRICT
    preset: str | None = "talk"
    frames: int | None = Field(None, ge=1)
    expression: list[list[float]] | None = None
    jaw: list[list[float]] | None = None


class RenderRequest(BaseModel):
    """Frames of an avatar: a driving signal seen from ``cameras`` (1 or one per frame; none: the portrait's
    own camera) or a turntable (``orbit``). ``format``: ``json`` (PNG frames as data URLs), ``mp4`` or ``png``
    (all frames side by side in one image)."""

    model_config = STRICT
    driving: DrivingSpec = Field(default_factory=DrivingSpec)
    cameras: list[CameraSpec] | None = None
    orbit: bool = False
    format: Literal["json", "mp4", "png"] = "json"
    fps: float | None = Field(None, gt=0, le=120)


class CreateAvatarJSON(BaseModel):
    """A portrait as base64 (PNG, JPEG, WebP, ...; a ``data:`` URL prefix is accepted)."""

    model_config = STRICT
    image_base64: str
    seed: int = Field(0, ge=0, le=2**31 - 1)


class AvatarInfo(BaseModel):
    avatar_id: str
    triplane_shape: list[int]
    checkpoints: dict[str, str]
    sampling: dict
    portrait_resolution: int


class RenderedFrames(BaseModel):
    avatar_id: str
    frames: list[str] = Field(description="PNG frames as data URLs")
    fps: float
    width: int
    height: int


class ErrorBody(BaseModel):
    error: str
    status: int
