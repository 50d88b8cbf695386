import dataclasses

import pytest

from avatar4d.config import Config, ConfigError, PresetRegistry
from avatar4d.errors import UserError


@dataclasses.dataclass
class Inner(Config):
    width: int = 4
    scale: float = 1.0


@dataclasses.dataclass
class Outer(Config):
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.0, 1.0)
    maybe: int | None = None
    flags: list[bool] = dataclasses.field(default_factory=list)


def test_round_trips_rebuild_nested_dataclasses():
    cfg = Outer(name="y", inner=Inner(8, 0.5), sizes=(3, 4, 5), pair=(1.5, 2.0), maybe=3, flags=[True])
    for text_cfg in (Outer.from_json(cfg.to_json()), Outer.from_yaml(cfg.to_yaml()), Outer.from_dict(cfg.to_dict())):
        assert text_cfg == cfg
        assert isinstance(text_cfg.inner, Inner)


def test_unknown_keys_and_wrong_types_are_user_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        Outer.from_dict({"nmae": "typo"})
    with pytest.raises(ConfigError, match="integer"):
        Outer.from_dict({"inner": {"width": "wide"}})
    with pytest.raises(ConfigError, match="2 items"):
        Outer.from_dict({"pair": [1.0]})
    assert issubclass(ConfigError, UserError)


def test_replace_checks_types_and_ints_widen_to_floats():
    cfg = Outer().replace(inner=Inner(width=2), maybe=None)
    assert cfg.inner.width == 2
    assert Inner.from_dict({"scale": 2}).scale == 2.0
    with pytest.raises(ConfigError):
        Outer().replace(sizes="abc")


def test_load_from_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: z\ninner: {width: 16}\n")
    assert Outer.load(path).inner.width == 16
    with pytest.raises(ConfigError, match="not found"):
        Outer.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        Outer.load(bad)


def test_preset_registry():
    presets: PresetRegistry[Inner] = PresetRegistry("inner")

    @presets.register("tiny")
    def _tiny() -> Inner:
        return Inner(width=2)

    assert presets.names() == ["tiny"] and "tiny" in presets
    assert presets.get("tiny").width == 2
    assert presets.get("tiny", scale=3.0).scale == 3.0
    with pytest.raises(ConfigError, match="choose from"):
        presets.get("huge")
    with pytest.raises(ValueError, match="twice"):
        presets.register("tiny")(_tiny)
