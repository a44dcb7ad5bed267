import argparse

import pytest
from pydantic import Field

from enclave.config import StrictConfig, add_config_flags, apply_overrides, flag_values, load_config
from enclave.errors import ConfigError


class Train(StrictConfig):
    lr: float = Field(1e-4, gt=0)
    """Learning rate."""
    steps: int = 10
    """Optimizer steps."""


class Recipe(StrictConfig):
    name: str = "demo"
    """Run name."""
    train: Train = Train()
    """Training settings."""


def test_defaults_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain:\n  lr: 0.001\n")
    cfg = load_config(Recipe, path, ["train.steps=30", "train.lr=2e-4"])
    assert cfg == Recipe(name="x", train=Train(lr=2e-4, steps=30))


def test_every_error_reported_at_once(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("nmae: x\ntrain:\n  lr: -1\n  steps: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path)
    assert info.value.problems == [
        "train.lr: Input should be greater than 0 (got -1)",
        "train.steps: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        "nmae: unknown key (check the spelling; `--help` lists the keys)",
    ]
    assert str(info.value).startswith(f"3 config errors in {path}:")


@pytest.mark.parametrize("override", ["train.lr", "=3", "train..lr=1"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Recipe, None, [override])


def test_override_replaces_scalar_with_mapping_copy():
    data = {"train": 1}
    assert apply_overrides(data, ["train.lr=1"]) == {"train": {"lr": 1}}
    assert data == {"train": 1}


@pytest.mark.parametrize("text, problem", [("- a\n- b\n", "expected a mapping"), ("a: [\n", "not valid YAML")])
def test_bad_yaml(tmp_path, text, problem):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_config(Recipe, path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(Recipe, tmp_path / "nope.yaml")


def test_flags_use_docstrings_and_feed_the_config():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Train)
    assert "Learning rate." in parser.format_help()
    args = parser.parse_args(["--lr", "0.5"])
    assert flag_values(args) == {"lr": "0.5"}
    assert load_config(Train, None, ["steps=3"], flags=flag_values(args)) == Train(lr=0.5, steps=3)


def test_config_errors_never_echo_a_secret_value():
    from serve.config import ServeConfig

    with pytest.raises(ConfigError) as e:
        load_config(
            ServeConfig,
            None,
            ["repo=x", "tls.key={pem: hunter2-private}", "auth.tokens_file=[s3cr3t-token-value]", "port=abc"],
        )
    text = str(e.value)
    assert "hunter2" not in text and "s3cr3t" not in text and "the value is not shown" in text
    assert "port" in text and "'abc'" in text  # ordinary values are still named
