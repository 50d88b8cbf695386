"""The HTTP ingress (FastAPI on Ray Serve) and the application graph.

    GET  /                              the web page (serve/web)
    GET  /v1/health                     liveness: the ingress answers
    GET  /v1/ready                      readiness: every deployment answers (503 until then)
    GET  /v1/samples                    bundled sample portraits; GET /v1/samples/{name} → PNG
    POST /v1/avatars                    portrait (multipart field ``portrait`` + ``seed``, or JSON
                                        ``{"image_base64", "seed"}``) → 201 avatar info with its id
    GET  /v1/avatars/{id}               avatar info
    POST /v1/avatars/{id}/render        RenderRequest → PNG frames (JSON), one PNG strip, or MP4
    GET  /v1/avatars/{id}/turntable     turntable MP4 (``?frames=N&preset=talk``)
    GET  /v1/stats                      batch sizes seen by the generator and renderer, store counts

Every user mistake is a 4xx with ``{"error": message, "status": code}``; the body size limit is
enforced while reading, before anything is parsed. OpenAPI: ``/openapi.json``, ``/docs``.
"""


import asyncio
import base64
import binascii
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from avatar4d.errors import UserError
from serve.schemas import AvatarInfo, CreateAvatarJSON, ErrorBody, RenderedFrames, RenderRequest
from serve.settings import ServeSettings

logger = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
SAMPLES = WEB / "samples"
ERRORS = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
          415: {"model": ErrorBody}, 422: {"model": ErrorBody}}

api = FastAPI(title="avatar4d", version="1",
              description="One portrait of any style → a drivable 4D avatar (AvatarArtist), rendered from any "
                          "camera, driven by expression presets or coefficients.")
api.mount("/static", StaticFiles(directory=WEB), name="static")


@api.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and the router's own 404/405
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail), "status": exc.status_code}, status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": _validation_message(exc.errors()), "status": 422}, status_code=422)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{first.get('msg', 'invalid')}{more}"


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed (JSON has no NaN or infinity)")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_json_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"malformed JSON: {exc}") from None


def user_error(exc: BaseException) -> UserError | None:
    """The :class:`UserError` behind an exception a deployment raised (Ray wraps it), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        cause = getattr(seen, "cause", None)  # RayTaskError keeps the original exception here
        if isinstance(cause, UserError):
            return cause
        if isinstance(seen, UserError):
            return seen
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return None


def _frames_png_strip(frames: np.ndarray) -> bytes:
    from avatar4d.pipeline import encode_png

    return encode_png(np.concatenate(list(frames), axis=1))


def _frames_mp4(frames: np.ndarray, fps: float) -> bytes:
    from avatar4d.tracking.media import write_video

    with tempfile.TemporaryDirectory(prefix="avatar4d-serve-") as folder:
        path = write_video(Path(folder) / "frames.mp4", frames, fps)
        return path.read_bytes()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self, preprocess: DeploymentHandle, encoders: DeploymentHandle, generator: DeploymentHandle,
                 store: DeploymentHandle, renderer: DeploymentHandle, settings: ServeSettings) -> None:
        from avatar4d.geometry.morphable import default_head_model

        self.preprocess, self.encoders, self.generator = preprocess, encoders, generator
        self.store, self.renderer, self.settings = store, renderer, settings
        self.head = default_head_model()
        self._info: dict[str, Any] | None = None

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"request body is over the limit of {limit:,} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # starlette's form parser reads the cached body
        return body

    async def _call(self, handle: DeploymentHandle, *args: Any) -> Any:
        try:
            return await handle.remote(*args)
        except Exception as exc:  # noqa: BLE001 - a user's mistake found by a deployment is a 422
            found = user_error(exc)
            if found is None:
                raise
            raise HTTPException(422, str(found).splitlines()[0]) from None

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            generator, renderer, encoders = await asyncio.gather(
                self.generator.info.remote(), self.renderer.info.remote(), self.encoders.info.remote())
            hashes = {**generator["hashes"], **encoders, "generator": renderer["generator"]}
            self._info = {**generator, **renderer, "hashes": hashes}
        return self._info

    # --- pages and health -------------------------------------------------------------------------
    @api.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @api.get("/v1/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/ready", responses={503: {"model": ErrorBody}})
    async def ready(self) -> JSONResponse:
        handles = {"preprocess": self.preprocess, "encoders": self.encoders, "generator": self.generator,
                   "store": self.store, "renderer": self.renderer}
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in handles.values())), timeout=10)
        except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason
            return JSONResponse({"error": f"not ready: {type(exc).__name__}", "status": 503}, status_code=503)
        return JSONResponse({"status": "ready", "deployments": sorted(handles)})

    @api.get("/v1/samples")
    async def samples(self) -> dict[str, list[str]]:
        return {"samples": sorted(p.stem for p in SAMPLES.glob("*.png"))}

    @api.get("/v1/samples/{name}", responses=ERRORS)
    async def sample(self, name: str) -> FileResponse:
        path = SAMPLES / f"{name}.png"
        if not name.replace("_", "").isalnum() or not path.is_file():
            raise HTTPException(404, f"no sample portrait named {name!r}")
        return FileResponse(path, media_type="image/png")

    @api.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        generator, renderer, store = await asyncio.gather(self.generator.batch_stats.remote(),
                                                          self.renderer.batch_stats.remote(), self.store.stats.remote())
        return {"generator": generator, "renderer": renderer, "store": store}

    # --- avatars ------------------------------------------------------------------------------------
    @api.post("/v1/avatars", status_code=201, response_model=AvatarInfo, responses=ERRORS, openapi_extra={
        "requestBody": {"content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["portrait"], "properties": {
                "portrait": {"type": "string", "format": "binary"}, "seed": {"type": "integer"}}}},
            "application/json": {"schema": CreateAvatarJSON.model_json_schema()}}}})
    async def create(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        body = await self._body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                payload = CreateAvatarJSON.model_validate(parse_json(body))
            except ValidationError as exc:
                raise HTTPException(422, _validation_message(exc.errors())) from None
            text = payload.image_base64.split(",", 1)[1] if payload.image_base64.startswith("data:") else \
                payload.image_base64
            try:
                image, seed = base64.b64decode(text, validate=True), payload.seed
            except (binascii.Error, ValueError):
                raise HTTPException(422, "image_base64 is not valid base64") from None
        elif kind == "multipart/form-data":
            image, seed = await self._form(request)
        else:
            raise HTTPException(415, f"send the portrait as multipart/form-data (field 'portrait') or "
                                     f"application/json (image_base64), not {kind or 'no content type'}")
        portrait, label, coefficients = await self._call(self.preprocess, image)
        clip, dino = await self._call(self.encoders, portrait)
        triplane = await self._call(self.generator, clip, dino, seed)
        info = await self.info()
        avatar = await asyncio.to_thread(self._avatar, portrait, label, coefficients, triplane, seed)
        await self.store.put.remote(avatar)
        logger.info("avatar %s in %.3fs", avatar.avatar_id, time.perf_counter() - started)
        return JSONResponse(self._avatar_info(avatar, info).model_dump(), status_code=201)

    async def _form(self, request: Request) -> tuple[bytes, int]:
        try:
            form = await request.form()
        except Exception as exc:  # noqa: BLE001 - python-multipart's errors on a broken body
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        upload = form.get("portrait")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "the multipart body needs a file field named 'portrait'")
        seed_text = form.get("seed", "0")
        if not isinstance(seed_text, str) or not seed_text.strip().isdigit() or int(seed_text) > 2**31 - 1:
            raise HTTPException(422, f"seed must be an integer in [0, 2^31 - 1], got {seed_text!r}")
        return await upload.read(), int(seed_text)

    def _avatar(self, portrait: Any, label: Any, coefficients: Any, triplane: Any, seed: int) -> Any:
        from avatar4d.pipeline.pipeline import build_avatars

        info = self._info or {}
        return build_avatars(portrait[None], label[None], coefficients[None], triplane[None], [seed],
                             hashes=info.get("hashes", {}), sampling=info.get("sampling", {}),
                             identity_dim=self.head.identity_dim, expression_dim=self.head.expression_dim)[0]

    def _avatar_info(self, avatar: Any, info: dict[str, Any]) -> AvatarInfo:
        return AvatarInfo(avatar_id=avatar.avatar_id, triplane_shape=list(avatar.triplane.shape),
                          checkpoints=avatar.checkpoints, sampling=avatar.sampling,
                          portrait_resolution=int(info.get("portrait_resolution", avatar.source_image.shape[-1])))

    async def _get(self, avatar_id: str) -> Any:
        avatar = await self.store.get.remote(avatar_id)
        if avatar is None:
            raise HTTPException(404, f"no avatar with id {avatar_id!r}")
        return avatar

    @api.get("/v1/avatars/{avatar_id}", response_model=AvatarInfo, responses=ERRORS)
    async def describe(self, avatar_id: str) -> AvatarInfo:
        return self._avatar_info(await self._get(avatar_id), await self.info())

    @api.post("/v1/avatars/{avatar_id}/render", responses={**ERRORS, 200: {
        "content": {"application/json": {"schema": RenderedFrames.model_json_schema()}, "video/mp4": {},
                    "image/png": {}}}}, openapi_extra={"requestBody": {"content": {"application/json": {
                        "schema": RenderRequest.model_json_schema()}}}})
    async def render(self, avatar_id: str, request: Request) -> Response:
        body = await self._body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPException(415, f"send the render request as application/json, not {kind or 'no content type'}")
        try:
            spec = RenderRequest.model_validate(parse_json(body) if body.strip() else {})
        except ValidationError as exc:
            raise HTTPException(422, _validation_message(exc.errors())) from None
        avatar = await self._get(avatar_id)
        return await self._render(avatar, spec)

    @api.get("/v1/avatars/{avatar_id}/turntable", responses={**ERRORS, 200: {"content": {"video/mp4": {}}}})
    async def turntable(self, avatar_id: str, frames: int | None = None, preset: str = "talk") -> Response:
        spec = RenderRequest(driving={"preset": preset, "frames": frames or self.settings.default_frames},
                             orbit=True, format="mp4")
        return await self._render(await self._get(avatar_id), spec)

    async def _render(self, avatar: Any, spec: RenderRequest) -> Response:
        job = await asyncio.to_thread(self._job, avatar, spec)
        frames = await self._call(self.renderer, job)
        fps = spec.fps or 25.0
        if spec.format == "mp4":
            return Response(await asyncio.to_thread(_frames_mp4, frames, fps), media_type="video/mp4")
        if spec.format == "png":
            return Response(await asyncio.to_thread(_frames_png_strip, frames), media_type="image/png")
        encoded = await asyncio.to_thread(self._data_urls, frames)
        return JSONResponse(RenderedFrames(avatar_id=avatar.avatar_id, frames=encoded, fps=fps,
                                           width=int(frames.shape[2]), height=int(frames.shape[1])).model_dump())

    @staticmethod
    def _data_urls(frames: np.ndarray) -> list[str]:
        from avatar4d.pipeline import encode_png

        return ["data:image/png;base64," + base64.b64encode(encode_png(frame)).decode() for frame in frames]

    def _job(self, avatar: Any, spec: RenderRequest) -> Any:
        from avatar4d.pipeline import cameras_from_degrees, from_arrays, make_job, preset_sequence, turntable

        limit = self.settings.max_frames
        driving = spec.driving
        try:
            if driving.expression is not None:
                if driving.preset not in (None, "talk") or driving.frames is not None:
                    raise UserError("give either driving.expression (with optional jaw) or driving.preset + frames")
                sequence = from_arrays(driving.expression, driving.jaw)
            else:
                frames = driving.frames or (len(spec.cameras) if spec.cameras and len(spec.cameras) > 1
                                            else self.settings.default_frames)
                if frames > limit:
                    raise UserError(f"{frames} frames asked for; the limit is {limit}")
                sequence = preset_sequence(driving.preset or "neutral", self.head, frames)
            count = sequence.frames
            if count > limit:
                raise UserError(f"{count} frames asked for; the limit is {limit}")
            if spec.orbit and spec.cameras:
                raise UserError("give cameras or orbit, not both")
            cameras = None
            if spec.orbit:
                cameras = turntable(count)
            elif spec.cameras:
                values = [(c.yaw, c.pitch) for c in spec.cameras]
                if any(not math.isfinite(v) for pair in values for v in pair):
                    raise UserError("camera angles must be finite")
                cameras = cameras_from_degrees([v[0] for v in values], [v[1] for v in values])
            return make_job(avatar, sequence, cameras, expression_dim=self.head.expression_dim, max_frames=limit)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None


def build_app(settings: ServeSettings | dict[str, Any]) -> Any:
    """The application graph: every deployment bound with the resolved checkpoints and settings."""
    from avatar4d.pipeline import resolve_checkpoints
    from serve.deployments import AvatarGenerator, AvatarStore, Encoders, FrameRenderer, Preprocess

    settings = (settings if isinstance(settings, ServeSettings) else ServeSettings.from_args(settings)).resolved()
    if not settings.checkpoints:
        raise UserError("the Serve application needs checkpoints (avatar4d serve --checkpoints DIR)")
    checkpoints = resolve_checkpoints(settings.checkpoints)
    scaling = ({"num_replicas": 1} if settings.max_replicas == 1 else
               {"autoscaling_config": {"min_replicas": 1, "max_replicas": settings.max_replicas,
                                       "target_ongoing_requests": 4}})
    generator = AvatarGenerator.options(user_config=settings.generator_batch.to_dict(), **scaling)
    renderer = FrameRenderer.options(user_config=settings.renderer_batch.to_dict(), **scaling)
    return Ingress.bind(Preprocess.bind(checkpoints, settings), Encoders.bind(checkpoints, settings),
                        generator.bind(checkpoints, settings), AvatarStore.bind(settings),
                        renderer.bind(checkpoints, settings), settings)


def app_builder(args: dict[str, Any]) -> Any:
    """``serve run serve.app:app_builder checkpoints=DIR`` / the ``import_path`` of serve/serve_config.yaml."""
    return build_app(args)
