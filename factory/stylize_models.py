"""The Stable Diffusion + face-landmark ControlNet pipeline the stylize stage runs.

One load path, three sources of weights:

- ``tiny`` (the embedded default): a small UNet, ControlNet, VAE, CLIP text encoder and a
  character-level CLIP tokenizer, randomly initialised from configs (seeded), run by the real
  ``StableDiffusionControlNetImg2ImgPipeline``; CPU seconds;
- ``paper-random``: the same classes at Stable Diffusion 1.5 sizes (UNet 860M, ControlNet 361M,
  VAE 84M, CLIP ViT-L/14 text encoder 123M), random weights: the real model's compute, for
  benchmarks (no weights needed);
- ``pretrained``: local weights (``sd_path``: a diffusers folder or one ``.safetensors``/``.ckpt``
  file, as Civitai ships community models; ``controlnet_path``: a diffusers ControlNet folder or
  file, e.g. CrucibleAI's ControlNetMediaPipeFace). Nothing is downloaded (``local_files_only``).

diffusers is imported inside the functions (the factory's CLI stays light).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

MODEL_SOURCES = ("tiny", "paper-random", "pretrained")
TINY_TEXT_TOKENS = 77  # CLIP's length: a character-level tokenizer needs it for the catalog's prompts


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's byte → printable-unicode table (the alphabet byte-level BPE works on)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_char_tokenizer(folder: Path, max_length: int = TINY_TEXT_TOKENS) -> Any:
    """A CLIP tokenizer with a small local vocabulary: every byte symbol alone and word-final
    (``</w>``), the two special tokens, no merges (so text is tokenised character by character)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_alphabet()
    vocab = {token: index for index, token in enumerate(symbols + [s + "</w>" for s in symbols]
                                                        + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def _components(unet: Any, controlnet: Any, vae: Any, text: Any, tokenizer: Any) -> dict[str, Any]:
    """The pipeline's components with Stable Diffusion 1.5's DDIM schedule (scaled-linear betas)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, controlnet=controlnet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                scheduler=scheduler)


def _tiny_components(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_char_tokenizer(Path(tempfile.mkdtemp(prefix="avatar4d-tokenizer-")))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blocks = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                      attention_head_dim=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"))
        unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4,
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
        controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 16), **blocks)
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=4, sample_size=64)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=2, num_attention_heads=2,
                                            max_position_embeddings=TINY_TEXT_TOKENS,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id))
    return _components(unet, controlnet, vae, text, tokenizer)


def _paper_random_components(seed: int) -> dict[str, Any]:
    """Stable Diffusion 1.5's architecture (its published configs), random weights."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_char_tokenizer(Path(tempfile.mkdtemp(prefix="avatar4d-tokenizer-")), max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        controlnet = ControlNetModel(cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id))
    return _components(unet, controlnet, vae, text, tokenizer)


def _check_path(option: str, path: str | None) -> Path:
    if not path:
        raise UserError(f"stylize with pretrained weights needs {option} (a local diffusers folder or file)")
    found = Path(path).expanduser()
    if not found.exists():
        raise UserError(f"{option} {path}: no such file or folder")
    return found


def _load_pretrained(sd_path: str | None, controlnet_path: str | None, dtype: torch.dtype) -> Any:
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline

    sd, cn = _check_path("--sd-path", sd_path), _check_path("--controlnet-path", controlnet_path)
    try:
        controlnet = (ControlNetModel.from_single_file(str(cn), torch_dtype=dtype, local_files_only=True)
                      if cn.is_file() else ControlNetModel.from_pretrained(str(cn), torch_dtype=dtype,
                                                                            local_files_only=True))
        loader = (StableDiffusionControlNetImg2ImgPipeline.from_single_file if sd.is_file()
                  else StableDiffusionControlNetImg2ImgPipeline.from_pretrained)
        pipe = loader(str(sd), controlnet=controlnet, torch_dtype=dtype, safety_checker=None,
                      requires_safety_checker=False, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise UserError(f"cannot load Stable Diffusion from {sd} with the ControlNet {cn}: "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # SDEdit with DDIM, as the paper's 30 steps
    return pipe


def build_pipeline(source: str, *, sd_path: str | None = None, controlnet_path: str | None = None,
                   device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """A ``StableDiffusionControlNetImg2ImgPipeline`` from ``source`` (see the module docstring)."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    if source not in MODEL_SOURCES:
        raise UserError(f"unknown stylize models {source!r}; choose from {list(MODEL_SOURCES)}")
    if source == "pretrained":
        pipe = _load_pretrained(sd_path, controlnet_path, dtype)
    else:
        components = _tiny_components(seed) if source == "tiny" else _paper_random_components(seed)
        pipe = StableDiffusionControlNetImg2ImgPipeline(**components, safety_checker=None, feature_extractor=None,
                                                        requires_safety_checker=False)
        if dtype != torch.float32:  # built in float32; cast only when asked (diffusers warns on a no-op cast)
            pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_sha256(pipe: Any) -> str:
    """SHA-256 over the weights of the pipeline's networks (UNet, ControlNet, VAE, text encoder), in
    name order: which models made a row."""
    digest = hashlib.sha256()
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
