"""Domain catalog: the paper's 28 domains with their exact prompts, user YAML, unknown names."""

import pytest

from avatar4d.config import ConfigError
from avatar4d.errors import UserError
from factory.domains import (
    COMMUNITY_MODEL_PROMPT,
    DomainCatalog,
    DomainError,
    DomainSpec,
    UnknownDomainError,
    builtin_domains,
    load_domains,
)


def test_builtin_catalog_has_the_papers_28_domains():
    domains = builtin_domains()
    kinds = [d.kind for d in domains]
    assert len(domains) == 28 and len({d.name for d in domains}) == 28
    assert kinds.count("prompt") == 20 and kinds.count("model") == 7 and kinds.count("realistic") == 1
    catalog = load_domains()
    assert len(catalog) == 28 and catalog.names()[:3] == ["pixar", "lego", "greek_statue"]
    assert all(d.generator_checkpoint is None and d.base_model is None for d in catalog)


@pytest.mark.parametrize("name, prompt", [
    ("pixar", "a 3D render of a face in Pixar style"),
    ("lego", "a 3D render of a head of a lego man 3D model"),
    ("masque", "a FHD photo of a face of a person in masquerad"),
    ("peking_opera", "a FHD photo of face of character in Peking opera with heavy make-up"),
    ("pixel_art", "pixel art style portrait, low res, blocky, pixel art style"),
    ("ink", "a portrait in ink style, black and white image"),
])
def test_prompt_domains_keep_the_papers_exact_prompts(name, prompt):
    assert load_domains().get(name).prompt == prompt


def test_community_model_domains_share_the_prompt_and_name_their_models():
    catalog = load_domains()
    models = {d.display_name: d.model_name for d in catalog if d.kind == "model"}
    assert models == {"3D-Animation": "3D Animation Diffusion-V1.0", "Toon": "ToonYou-Beta6", "AAM": "AAM Anime Mix",
                      "Counterfeit": "Counterfeit-V3.0", "Pencil": "Pencil Sketch", "Lyriel": "Lyriel-V1.6",
                      "XXM": "XXMix9realistic"}
    assert {d.prompt for d in catalog if d.kind == "model"} == {COMMUNITY_MODEL_PROMPT}
    assert COMMUNITY_MODEL_PROMPT == "masterpieces, portrait, high-quality"
    assert catalog.get("realistic").kind == "realistic" and catalog.get("realistic").prompt == ""


def test_user_yaml_adds_and_overrides(tmp_path):
    path = tmp_path / "domains.yaml"
    path.write_text(
        "domains:\n"
        "  - name: watercolor\n    prompt: a watercolor portrait\n"
        "  - name: pixar\n    generator_checkpoint: /models/pixar\n"
        "  - name: toon\n    base_model: /models/toonyou\n"
    )
    catalog = load_domains(path)
    assert len(catalog) == 29 and catalog.names()[-1] == "watercolor"
    assert catalog.get("watercolor").kind == "prompt" and catalog.get("watercolor").display_name == "watercolor"
    pixar = catalog.get("pixar")
    assert pixar.generator_checkpoint == "/models/pixar" and pixar.prompt == "a 3D render of a face in Pixar style"
    assert catalog.get("toon").base_model == "/models/toonyou" and catalog.get("toon").model_name == "ToonYou-Beta6"
    assert [d.name for d in catalog.select(["toon", "pixar"])] == ["toon", "pixar"]


def test_unknown_domain_names_close_matches():
    catalog = load_domains()
    with pytest.raises(UnknownDomainError, match=r"unknown domain 'pixr'; did you mean pixar, pixel_art\?"):
        catalog.get("pixr")
    with pytest.raises(UnknownDomainError, match="greek_statue"):
        catalog.select(["lego", "greek_statu"])
    with pytest.raises(UnknownDomainError, match="known: a"):
        DomainCatalog([DomainSpec(name="a", prompt="p")]).get("zzzzzz")
    assert issubclass(UnknownDomainError, UserError) and "pixar" in catalog and "pixr" not in catalog


@pytest.mark.parametrize("text, error, message", [
    ("domains: [{name: Bad Name, prompt: x}]", DomainError, "must be a slug"),
    ("domains: [{name: odd, kind: video, prompt: x}]", DomainError, "kind must be one of"),
    ("domains: [{name: empty}]", DomainError, "needs a prompt"),
    ("domains: [{name: odd, prompt: x, colour: red}]", ConfigError, r"unknown key\(s\) \['colour'\]"),
    ("domains: [{prompt: x}]", DomainError, "entry 0 has no name"),
    ("- just a list", DomainError, "'domains' list"),
    ("domains: [unclosed", DomainError, "not valid YAML"),
])
def test_bad_user_yaml_gives_one_line_errors(tmp_path, text, error, message):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(error, match=message) as info:
        load_domains(path)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_missing_domain_file(tmp_path):
    with pytest.raises(DomainError, match="domain file not found"):
        load_domains(tmp_path / "nope.yaml")
