"""The YAML config: typed values, and one-line errors that name the key and the file."""
import pytest

from common.config import ConfigError, RunConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_references():
    c = load_config()
    assert (c.producer.guidance, c.producer.steps, c.producer.size) == (7.5, 25, 512)
    assert (c.consumer.steps, c.consumer.gamma, c.consumer.temperature) == (50, 0.75, 1.5)
    assert c.producer.prompt_template == "{prompt} in style_{style}"
    assert len(c.consumer.layers) == 6


def test_values_are_typed_and_nested(tmp_path):
    c = load_config(write(tmp_path, "producer:\n  steps: 10\n  guidance: 5\nconsumer:\n  layers: [up_blocks.2.attentions.0, up_blocks.3.attentions.1]\n"))
    assert c.producer.steps == 10 and c.producer.guidance == 5.0 and isinstance(c.producer.guidance, float)
    assert c.consumer.layers == ("up_blocks.2.attentions.0", "up_blocks.3.attentions.1")
    assert c.source == str(tmp_path / "c.yaml")


@pytest.mark.parametrize("text, key", [
    ("producr:\n  steps: 3\n", "producr"),
    ("producer:\n  stepz: 3\n", "stepz"),
    ("producer:\n  steps: many\n", "producer.steps"),
    ("consumer:\n  gamma: 1.5\n", "consumer.gamma"),
    ("queue:\n  fsync: sometimes\n", "queue.fsync"),
    ("consumer:\n  temperature: 0\n", "consumer.temperature"),
    ("consumer:\n  layers: [up_blocks.3.attn]\n", "consumer.layers"),
])
def test_a_bad_key_or_value_is_one_line_naming_file_and_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message and "c.yaml" in message and key in message


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: line 2"):
        load_config(write(tmp_path, "producer:\n  steps: a: b\n"))


def test_missing_file_says_which(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_pixel_hash_ignores_batching_but_not_pixels():
    base = RunConfig()
    assert load_config(overrides={"producer.batch": 1}).pixel_hash() == base.pixel_hash()
    assert load_config(overrides={"consumer.cached_styles": 9}).pixel_hash() == base.pixel_hash()
    assert load_config(overrides={"consumer.gamma": 0.3}).pixel_hash() != base.pixel_hash()
    assert load_config(overrides={"producer.seed": 1}).pixel_hash() != base.pixel_hash()
