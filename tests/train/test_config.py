"""TrainConfig's sections and config files: every field has a home, files are checked like flags."""

import dataclasses

import pytest

from convforge.errors import ConfigError
from convforge.train.config import SECTIONS, TrainConfig, flatten_sections, load_config_file


def test_every_field_is_in_exactly_one_section():
    placed = [name for names in SECTIONS.values() for name in names]
    assert sorted(placed) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert "distillation" in SECTIONS  # the room the compress work fills


def test_sections_round_trip():
    config = TrainConfig(data="shapes", lr=0.01, mixup=0.2, min_lr=1e-6, ema_decay=0.99, adv_steps=3)
    grouped = config.to_sections()
    assert grouped["optimisation"]["lr"] == 0.01 and grouped["augmentation"]["mixup"] == 0.2
    assert TrainConfig(**flatten_sections(grouped, "test")) == config


def test_a_config_file_gives_keys_to_fields_without_flags(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "data: shapes\nmodel: resnet10t\nseed: 3\n"
        "optimisation: {min_lr: 1.0e-6, ema: true, ema_decay: 0.99}\n"
        "augmentation:\n  pad: 2\nmachine: {channels_last: false, eval_batch_size: 64}\n"
        "adversarial: {adv: fgsm, adv_val_images: 32}\n"
    )
    config = TrainConfig(**load_config_file(path))
    assert (config.model, config.seed, config.min_lr, config.ema_decay, config.pad) == ("resnet10t", 3, 1e-6, 0.99, 2)
    assert (config.channels_last, config.eval_batch_size, config.adv, config.adv_val_images) == (False, 64, "fgsm", 32)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimisation: {mixup: 0.2}", "optimisation.mixup: it belongs to 'augmentation'"),
        ("lr: 0.1", "'lr' belongs under the section 'optimisation'"),
        ("optimisation: {lrr: 0.1}", "did you mean: lr"),
        ("optimization: {lr: 0.1}", "did you mean: optimisation"),
        ("optimisation: 3", "section 'optimisation' must map option names to values"),
        ("- data: shapes", "must be a mapping"),
        ("data: [unclosed", "is not valid YAML"),
    ],
)
def test_config_file_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="(?i)" + message.replace("(", r"\(").replace(".", r"\.")):
        load_config_file(path)


def test_a_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml")


def test_a_config_files_values_are_coerced_or_refused_by_name(tmp_path):
    """YAML reads `1e-3` as text (its floats need a dot): the value becomes 0.001, not a TypeError
    mid-run; values of the wrong kind, NaN and infinity are refused naming the field."""
    path = tmp_path / "train.yaml"
    path.write_text("data: shapes\noptimisation: {lr: 1e-3, epochs: 2.0}\n")
    config = TrainConfig(**load_config_file(path))
    assert config.lr == 0.001 and config.epochs == 2 and isinstance(config.epochs, int)
    for text, message in [("{lr: .nan}", "lr must be a finite number, got nan"),
                          ("{lr: .inf}", "lr must be a finite number, got inf"),
                          ("{lr: fast}", "lr must be a finite number, got 'fast'"),
                          ("{epochs: 2.5}", "epochs must be a whole number, got 2.5"),
                          ("{lr: true}", "lr must be a finite number, got True")]:  # fmt: skip
        path.write_text(f"data: shapes\noptimisation: {text}\n")
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            TrainConfig(**load_config_file(path))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mixup", -1.0, "mixup cannot be negative"), ("cutmix", -0.5, "cutmix cannot be negative"),
    ("clip_grad", 0.0, "clip_grad is a gradient norm, more than 0"), ("deterministic", "yes", "true or false"),
])  # fmt: skip
def test_values_that_would_silently_mean_something_else_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="shapes", **{field: value})
