"""The YAML config: typed values, and one-line errors that name the key and the file."""
import dataclasses

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
    ("lora:\n  missing: ignore\n", "lora.missing"),
    ("lora:\n  scale: high\n", "lora.scale"),
    ("consumer:\n  size: 100\n", "consumer.size"),
    ("lora:\n  dir: a\nproducer:\n  lora_dir: b\n", "producer.lora_dir"),
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
    base = load_config()
    assert load_config(overrides={"producer.batch": 1}).pixel_hash() == base.pixel_hash()
    assert load_config(overrides={"consumer.cached_styles": 9}).pixel_hash() == base.pixel_hash()
    for key, value in (("consumer.gamma", 0.3), ("producer.seed", 1), ("lora.scale", 0.5), ("lora.dir", "x"),
                       ("lora.missing", "warn"), ("consumer.size", 256)):
        assert load_config(overrides={key: value}).pixel_hash() != base.pixel_hash(), key


def test_every_setting_declares_whether_it_changes_pixels():
    config, settings = RunConfig(), []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        settings += [(f"{f.name}.{g.name}", g) for g in dataclasses.fields(value)] \
            if dataclasses.is_dataclass(value) else [(f.name, f)]
    undeclared = [name for name, f in settings if not isinstance(f.metadata.get("pixels"), bool)]
    assert len(settings) > 50 and not undeclared, f"declare pixels() or runtime() for {undeclared}"


def test_the_pixel_hash_of_the_defaults_is_the_one_queues_were_planned_under():
    # job ids derive from it: a change would refuse (or re-plan) every existing queue. The train section left
    # it when results began to record their LoRA by content (docs/queue.md §11): c28a7c1868981cf0 before.
    assert load_config().pixel_hash() == "bd2355f1b1b6da3f"
    assert load_config(overrides={"lora.missing": "error"}).pixel_hash() == "b193e10918bc0db1"
    runtime_only = {"producer.batch": 2, "consumer.cached_styles": 5, "train.log_every": 3, "queue.fsync": "none",
                    "stages.gen_cost": 3.0, "scheduling.burst": 2, "queue.max_attempts": 9, "output": "elsewhere"}
    assert load_config(overrides=runtime_only).pixel_hash() == "bd2355f1b1b6da3f"


def test_queue_fsync_is_read_once_into_a_bool(tmp_path):
    assert load_config().queue.fsync is True
    assert load_config(write(tmp_path, "queue:\n  fsync: none\n")).queue.fsync is False
    with pytest.raises(ConfigError, match="queue.fsync: must be 'all' or 'none', not True"):
        load_config(write(tmp_path, "queue:\n  fsync: true\n"))


def test_the_consumer_size_defaults_to_the_producer_size():
    assert load_config(overrides={"producer.size": 256}).consumer.size == 256
    assert load_config(overrides={"producer.size": 256, "consumer.size": 128}).consumer.size == 128


def test_the_old_lora_keys_are_read_into_the_lora_section_with_a_one_line_note(tmp_path, capsys):
    old = load_config(write(tmp_path, "producer:\n  lora_dir: loras\n  lora_subdir: s{style}\n  lora_names: [a.bin]\n"
                                      "  lora_scale: 0.5\n  missing_lora: warn\n  steps: 3\n"))
    notes = capsys.readouterr().err.strip().splitlines()
    new = load_config(write(tmp_path, "lora:\n  dir: loras\n  subdir: s{style}\n  names: [a.bin]\n  scale: 0.5\n"
                                      "  missing: warn\nproducer:\n  steps: 3\n"))
    assert old.lora == new.lora and old.producer == new.producer and old.pixel_hash() == new.pixel_hash()
    assert len(notes) == 5 and capsys.readouterr().err == ""
    assert all("c.yaml" in line and "deprecated" in line for line in notes)
    assert "producer.lora_dir" in notes[0] and "lora.dir" in notes[0]
    assert any("producer.missing_lora" in line and "lora.missing" in line for line in notes)


def test_setting_an_old_lora_key_and_its_new_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: both producer.lora_scale \(deprecated\) and lora.scale"):
        load_config(write(tmp_path, "lora:\n  scale: 1.0\nproducer:\n  lora_scale: 0.5\n"))
