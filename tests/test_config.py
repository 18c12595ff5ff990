"""``lth_sparse.config``: options declared with their help, and mappings checked into config dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from lth_sparse.config import ConfigError, config_from_options, field_kind, option


@dataclasses.dataclass(frozen=True)
class Example:
    lr: float = option(0.1, "learning rate")
    steps: int = option(3, "steps")
    name: str = option("sgd", "optimizer", choices=("sgd", "adam"))
    size: int | None = option(None, "subset size")
    flag: bool = option(False, "a switch")
    milestones: tuple[float, ...] = option((), "epochs")
    extras: tuple[tuple[str, object], ...] = option((), "named values")


def test_field_kinds_come_from_the_annotations():
    kinds = {f.name: field_kind(Example, f) for f in dataclasses.fields(Example)}
    assert kinds == {
        "lr": ("scalar", float, False),
        "steps": ("scalar", int, False),
        "name": ("scalar", str, False),
        "size": ("scalar", int, True),
        "flag": ("scalar", bool, False),
        "milestones": ("list", float, False),
        "extras": ("pairs", None, False),
    }


def test_a_mapping_becomes_the_config_with_tuples_and_pairs():
    config = config_from_options(
        Example, {"lr": 1, "milestones": [1, 2.5], "extras": {"width": 16}, "size": None, "flag": True, "steps": 7}
    )
    assert config == Example(lr=1, steps=7, size=None, flag=True, milestones=(1, 2.5), extras=(("width", 16),))
    assert config_from_options(Example, {"milestones": 3}).milestones == (3,)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"learning_rate": 0.1, "stepz": 1}, "unknown options ['learning_rate', 'stepz']"),
        ({"steps": 2.5}, "steps must be int, got 2.5"),
        ({"steps": True}, "steps must be int, got True"),
        ({"lr": "fast"}, "lr must be float, got 'fast'"),
        ({"flag": "yes"}, "flag must be bool, got 'yes'"),
        ({"name": "rmsprop"}, "name must be one of ['sgd', 'adam'], got 'rmsprop'"),
        ({"steps": None}, "steps may not be empty"),
        ({"milestones": ["x"]}, "milestones must be float, got 'x'"),
        ({"extras": 5}, "extras must be a mapping"),
    ],
)
def test_wrong_names_and_types_are_refused_naming_the_option(options, message):
    with pytest.raises(ConfigError) as error:
        config_from_options(Example, options, source="--config c.yaml")
    assert message in str(error.value) and str(error.value).startswith("--config c.yaml: ")


def test_option_defaults_must_be_immutable():
    with pytest.raises(TypeError, match="immutable"):
        option([], "a list")
