"""The domain catalog: the paper's 28 domains plus the user's own (YAML).

AvatarArtist (supplementary D.1) stylizes FFHQ portraits into 27 domains and keeps the realistic
one: 20 prompt domains (table S1; Stable Diffusion with the exact prompts below, spelling kept as
printed, e.g. "masquerad") and 7 community-model domains (table S2; Civitai models, all with the
prompt "masterpieces, portrait, high-quality"). Each domain gets its own fine-tuned 4D GAN;
``generator_checkpoint`` points at it (None: a tiny randomly initialised GAN seeded by the domain
name, see :mod:`factory.generators`).

User YAML::

    domains:
      - name: watercolor            # a new domain
        kind: prompt
        prompt: a watercolor portrait, soft colors
      - name: pixar                 # overrides only the given fields of a built-in domain
        generator_checkpoint: /models/gan/pixar
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator
from pathlib import Path

from avatar4d.config import Config
from avatar4d.errors import UserError

KINDS = ("prompt", "model", "realistic")
COMMUNITY_MODEL_PROMPT = "masterpieces, portrait, high-quality"
# The paper gives no negative prompt; this is the usual Stable Diffusion 1.5 one for portraits.
DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, worst quality, low quality, blurry, deformed, watermark, text"
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*$")

# Table S1: (slug, concise name, full prompt)
PROMPT_DOMAINS: tuple[tuple[str, str, str], ...] = (
    ("pixar", "Pixar", "a 3D render of a face in Pixar style"),
    ("lego", "Lego", "a 3D render of a head of a lego man 3D model"),
    ("greek_statue", "Greek statue", "a FHD photo of a white Greek statue"),
    ("elf", "Elf", "a FHD photo of a face of a beautiful elf with silver hair in live action movie"),
    ("zombie", "Zombie", "a FHD photo of a face of a zombie"),
    ("tekken", "Tekken", "a 3D render of a Tekken game character"),
    ("devil", "Devil", "a FHD photo of a face of a devil in fantasy movie"),
    ("steampunk", "Steampunk", "Steampunk style portrait, mechanical, brass and copper tones"),
    ("mario", "Mario", "a 3D render of a face of Super Mario"),
    ("orc", "Orc", "a FHD photo of a face of an orc in fantasy movie"),
    ("masque", "Masque", "a FHD photo of a face of a person in masquerad"),
    ("skeleton", "Skeleton", "a FHD photo of a face of a skeleton in fantasy movie"),
    ("peking_opera", "Peking Opera", "a FHD photo of face of character in Peking opera with heavy make-up"),
    ("yoda", "Yoda", "a FHD photo of a face of Yoda in Star Wars"),
    ("hobbit", "Hobbit", "a FHD photo of a face of Hobbit in Lord of the Rings"),
    ("stained_glass", "Stained glass", "Stained glass style, portrait, beautiful, translucent"),
    ("graffiti", "Graffiti", "Graffiti style portrait, street art, vibrant, urban, detailed, tag"),
    ("pixel_art", "Pixel-art", "pixel art style portrait, low res, blocky, pixel art style"),
    ("retro", "Retro", "Retro game art style portrait, vibrant colors"),
    ("ink", "Ink", "a portrait in ink style, black and white image"),
)

# Table S2: (slug, concise name, Civitai model name)
MODEL_DOMAINS: tuple[tuple[str, str, str], ...] = (
    ("3d_animation", "3D-Animation", "3D Animation Diffusion-V1.0"),
    ("toon", "Toon", "ToonYou-Beta6"),
    ("aam", "AAM", "AAM Anime Mix"),
    ("counterfeit", "Counterfeit", "Counterfeit-V3.0"),
    ("pencil", "Pencil", "Pencil Sketch"),
    ("lyriel", "Lyriel", "Lyriel-V1.6"),
    ("xxm", "XXM", "XXMix9realistic"),
)


class DomainError(UserError):
    """A domain entry or domain file is invalid."""


class UnknownDomainError(DomainError):
    """A domain name that the catalog does not hold."""


@dataclasses.dataclass
class DomainSpec(Config):
    """One style domain.

    ``kind``: "prompt" (Stable Diffusion + ``prompt``), "model" (a community model at the local
    path ``base_model``, Civitai name ``model_name``) or "realistic" (FFHQ, no stylization).
    ``generator_checkpoint``: folder of the domain's fine-tuned 4D GAN (an avatar4d checkpoint);
    None uses the tiny random GAN seeded by ``name``.

    Stylize settings (``avatar4d factory stylize``; DESIGN.md "Stylize"): ``negative_prompt``,
    SDEdit ``strength`` (the share of the diffusion re-run from the noised portrait, ≈ 0.6),
    ``controlnet_scale`` (weight of the face-landmark ControlNet, ≈ 1.5), classifier-free
    ``guidance_scale`` (7.5) and sampler ``steps`` (30). A ``model`` domain's ``base_model`` is its
    community Stable Diffusion checkpoint (a diffusers folder or a single .safetensors file).
    """

    name: str = ""
    display_name: str = ""
    kind: str = "prompt"
    prompt: str = ""
    base_model: str | None = None
    model_name: str | None = None
    generator_checkpoint: str | None = None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    strength: float = 0.6
    controlnet_scale: float = 1.5
    guidance_scale: float = 7.5
    steps: int = 30

    def __post_init__(self) -> None:
        if not _NAME_PATTERN.match(self.name):
            raise DomainError(f"domain name {self.name!r} must be a slug: lower-case letters, digits, '_'")
        if self.kind not in KINDS:
            raise DomainError(f"domain {self.name}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind in ("prompt", "model") and not self.prompt.strip():
            raise DomainError(f"domain {self.name}: a {self.kind} domain needs a prompt")
        if not 0.0 < self.strength <= 1.0 or self.controlnet_scale < 0 or self.guidance_scale < 0 or self.steps < 1:
            raise DomainError(f"domain {self.name}: need 0 < strength <= 1, controlnet_scale >= 0, "
                              "guidance_scale >= 0 and steps >= 1")
        if not self.display_name:
            self.display_name = self.name


def builtin_domains() -> list[DomainSpec]:
    """The paper's 28 domains: 20 prompt (table S1), 7 community-model (table S2) and realistic."""
    domains = [DomainSpec(name=slug, display_name=display, kind="prompt", prompt=prompt)
               for slug, display, prompt in PROMPT_DOMAINS]
    domains += [DomainSpec(name=slug, display_name=display, kind="model", prompt=COMMUNITY_MODEL_PROMPT,
                           model_name=model) for slug, display, model in MODEL_DOMAINS]
    domains.append(DomainSpec(name="realistic", display_name="Realistic (FFHQ)", kind="realistic"))
    return domains


class DomainCatalog:
    """Domains by name, in catalog order (built-ins first, then user additions)."""

    def __init__(self, domains: list[DomainSpec]) -> None:
        self._domains: dict[str, DomainSpec] = {}
        for domain in domains:
            self._domains[domain.name] = domain

    def names(self) -> list[str]:
        return list(self._domains)

    def get(self, name: str) -> DomainSpec:
        try:
            return self._domains[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._domains, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self._domains)}"
            raise UnknownDomainError(f"unknown domain {name!r}; {hint}") from None

    def select(self, names: list[str] | None) -> list[DomainSpec]:
        """The named domains (all when ``names`` is None), checking every name."""
        return list(self._domains.values()) if names is None else [self.get(n) for n in names]

    def __contains__(self, name: object) -> bool:
        return name in self._domains

    def __iter__(self) -> Iterator[DomainSpec]:
        return iter(self._domains.values())

    def __len__(self) -> int:
        return len(self._domains)


def _read_entries(path: Path) -> list[dict]:
    import yaml

    if not path.is_file():
        raise DomainError(f"domain file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DomainError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    entries = data.get("domains") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DomainError(f"{path}: expected a mapping with a 'domains' list of mappings")
    return entries


def load_domains(path: str | Path | None = None) -> DomainCatalog:
    """The built-in catalog, plus (with ``path``) the user's YAML entries: an entry with a new name
    adds a domain, one with a known name replaces only the fields it gives."""
    domains = {d.name: d for d in builtin_domains()}
    if path is not None:
        path = Path(path).expanduser()
        for position, entry in enumerate(_read_entries(path)):
            name = entry.get("name")
            if not isinstance(name, str):
                raise DomainError(f"{path}: domain entry {position} has no name")
            base = domains[name].to_dict() if name in domains else {}
            domains[name] = DomainSpec.from_dict({**base, **entry}, _where=f"{path}: domain {name}")
    return DomainCatalog(list(domains.values()))
