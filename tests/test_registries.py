"""Registry parity: every config option names a registered plugin, every registered plugin has its config, and
the YAMLs list exactly the settings (and defaults) their plugin's ``Config`` dataclass declares."""

import sys

import pytest
import yaml

from charlit.registry import Registry
from charlit.settings import defaults, parse
from tests.conftest import REPO, compose

CONF = REPO / "conf"


def stems(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def objectives():
    from charlit.objectives import OBJECTIVES

    return OBJECTIVES


def teachers():
    from charlit.teachers import TEACHERS

    return TEACHERS


def samplers():
    from charlit.sampling import SAMPLERS

    return SAMPLERS


def test_every_method_yaml_names_a_registered_objective_and_every_objective_has_one():
    registry = objectives()
    assert stems("method") == set(registry.builtin_names())
    for stem in stems("method"):
        assert compose([f"method={stem}"]).method.name == stem


@pytest.mark.parametrize("group, registry", [("teacher", teachers), ("sampler", samplers)])
def test_every_option_names_a_registered_plugin_and_every_plugin_has_its_yaml(group, registry):
    registry = registry()
    named = {stem: compose([f"{group}={stem}"])[group].name for stem in stems(group)}
    assert set(named.values()) <= set(registry.names()), named
    assert set(registry.builtin_names()) <= stems(group)  # amplified_a2 etc. are variants of a registered teacher


def test_every_data_option_has_a_registered_kind_and_every_kind_has_its_yaml():
    from charlit.data.modules import DATA_MODULES
    from charlit.data.pipeline.cli import GENERATE_ONLY_KINDS

    kinds = {stem: compose([f"data={stem}"]).data.kind for stem in stems("data")}
    assert set(kinds.values()) - set(GENERATE_ONLY_KINDS) <= set(DATA_MODULES.names()), kinds
    assert set(DATA_MODULES.builtin_names()) <= stems("data")


def test_every_suite_config_lists_registered_suites_and_the_default_runs_them_all():
    from charlit.eval.suites import SUITES

    for path in (CONF / "suite").glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())["suites"]) <= set(SUITES.names()), path.name
    assert set(yaml.safe_load((CONF / "suite" / "default.yaml").read_text())["suites"]) == set(SUITES.builtin_names())


def _group_node(group: str, stem: str) -> dict:
    from omegaconf import OmegaConf

    cfg = compose([f"{group}={stem}"])
    return OmegaConf.to_container(cfg[group], resolve=True)


@pytest.mark.parametrize("group, registry", [("method", objectives), ("teacher", teachers), ("sampler", samplers)])
def test_yaml_settings_equal_the_declared_defaults(group, registry):
    """The YAML shows users the defaults; the dataclass is where code takes them from: they must not drift."""
    registry = registry()
    for name in registry.builtin_names():
        node = _group_node(group, name)
        node.pop("name")
        declared = defaults(registry.get(name).Config)
        required = {k for k, v in node.items() if v == "???"}
        assert set(node) == set(declared) | required, (group, name)
        assert {k: v for k, v in node.items() if k not in required} == declared, (group, name)
        parse(
            registry.get(name).Config,
            {k: v for k, v in node.items() if k not in required} | {k: "x" for k in required},
            group,
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.beta=2", r"method.beta=2 is out of range; it must be >= 0 and <= 1"),
        ("method.temperature=0", r"method.temperature=0 is out of range; it must be > 0"),
        (
            "method.teacher_weights=stale",
            r"method.teacher_weights='stale' is not valid; choose one of frozen, live, ema",
        ),
        ("+method.betta=0.5", r"method.betta is not a setting of method=self_distill; valid settings: beta, "),
        ("teacher=amplified teacher.alpha=-1", r"teacher.alpha=-1 is out of range; it must be >= 0"),
        ("sampler.temperature=-1", r"sampler.temperature=-1 is out of range; it must be >= 0"),
        ("sampler.top_p=0", r"sampler.top_p=0 is out of range"),
        ("trainer.max_steps=0", r"trainer.max_steps=0 must be a positive integer"),
        ("optim.lr=0", r"optim.lr=0 is out of range; it must be > 0"),
        ("optim.schedule=step", r"optim.schedule='step' is not valid; choose one of constant, cosine, linear"),
        ("val.temperature=0", r"val.temperature=0 is out of range"),
        ("data.batch_size=0", r"data.batch_size=0 is out of range; it must be > 0"),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_allowed_range(override, message):
    from charlit.run import build_objective

    cfg = compose(["model=tiny", "logger=none", *override.split()])
    with pytest.raises(ValueError, match=message):
        build_objective(cfg)


def test_registry_errors_list_the_registered_names_and_refuse_a_second_owner(tmp_path, monkeypatch):
    (tmp_path / "empty_widgets").mkdir()
    (tmp_path / "empty_widgets" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("widget", package="empty_widgets", group="charlit.test_widgets", option="widget")

    @registry.register("one")
    class One:
        pass

    assert registry.get("one") is One and One.name == "one"
    with pytest.raises(ValueError, match=r"widget='two' is not a registered widget; valid choices: one \("):
        registry.get("two")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("one")(type("Other", (), {}))


def test_a_new_module_in_the_package_is_discovered_with_no_table_to_edit(tmp_path, monkeypatch):
    """Built-ins are found by scanning the package: dropping one file in is enough."""
    import charlit.objectives as package

    (tmp_path / "scanned_toy.py").write_text(
        "from charlit.objectives import OBJECTIVES\n"
        "from charlit.objectives.sft import SFT\n\n"
        "@OBJECTIVES.register('scanned_toy')\nclass ScannedToy(SFT):\n    pass\n"
    )
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    fresh = Registry("objective", package="charlit.objectives", group="charlit.objectives", option="method")
    monkeypatch.setattr("charlit.objectives.OBJECTIVES", fresh)
    monkeypatch.setattr("charlit.objectives.registry.OBJECTIVES", fresh)
    monkeypatch.delitem(sys.modules, "charlit.objectives.scanned_toy", raising=False)
    assert "scanned_toy" in fresh.names()
    assert fresh.get("scanned_toy").__name__ == "ScannedToy"
    sys.modules.pop("charlit.objectives.scanned_toy", None)
