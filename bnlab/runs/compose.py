"""From command-line overrides to a validated RunConfig, in Python: `bnlab.compose`.

`compose(["model.norm=batch", "optim=adam", "experiment=demo"])` composes bnlab's packaged
configs (configs/, onto every setting's schema default: `schema_defaults`) with Hydra's
compose API, exactly as `bnlab train` does with the same overrides (config groups and
experiments included), and returns the RunConfig that `bnlab.run` takes. Hydra stays at
this edge: nothing below it imports Hydra.

Users add configs of their own the Hydra way: folders on Hydra's search path
(`hydra.searchpath=[DIR]`, or `bnlab train --config-dir DIR`) whose group folders
(`DIR/experiment/my_study.yaml`) add options next to the packaged ones.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, RunConfig, choices, load_config, to_dict

CONFIG_MODULE = "bnlab.conf"
PARENT_ENV = "BNLAB_SWEEP_PID"  # set by the sweeper; its joblib workers watch that process
MIN_FREE_BYTES = 20 * 2**20  # a run's histories and model files need a few MB
# the same configs, as a folder: configs/ in a checkout, configs/ in an installed package
CONFIG_DIR = str(resources.files(CONFIG_MODULE))
SCHEMA_NODE = "bnlab_schema"  # the first entry of configs/config.yaml's defaults list


def schema_defaults() -> dict:
    """Every setting at its schema default (bnlab/runs/config.py), the node Hydra composes the YAML
    onto: configs/ holds only what differs from it, and `bnlab train --cfg job` still shows
    every setting. data.root stays an interpolation, resolved when a config is loaded."""
    node = to_dict(RunConfig())
    node["data"]["root"] = "${bnlab_data_root:}"
    return node


ConfigStore.instance().store(name=SCHEMA_NODE, node=schema_defaults())


def groups() -> list[str]:
    """The config groups users choose from (data, experiment, optim, protocol)."""
    conf = resources.files(CONFIG_MODULE)
    return sorted(
        p.name for p in conf.iterdir() if p.is_dir() and p.name[0].isalnum() and p.name != "hydra"
    )


def group_options(group: str, search: Sequence[str] = ()) -> list[str]:
    """The options of a config group (the experiment names for 'experiment'), the packaged
    ones and those in the folders of `search` (Hydra search path entries: DIR, file://DIR or
    pkg://module)."""
    folders = [resources.files(CONFIG_MODULE) / group]
    for entry in search:
        scheme, _, where = entry.rpartition("://")
        try:
            folders.append((resources.files(where) if scheme == "pkg" else Path(where)) / group)
        except ModuleNotFoundError:
            continue  # Hydra names the missing package itself
    found = {p.name for f in folders if f.is_dir() for p in f.iterdir()}
    return sorted({name.removesuffix(".yaml") for name in found if name.endswith(".yaml")})


def search_path(overrides: Sequence[str]) -> list[str]:
    """The folders a `hydra.searchpath=[A,B]` override puts on Hydra's search path."""
    out = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            out += [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",")]
    return [v for v in out if v]


def with_config_dirs(overrides: Sequence[str], config_dirs: Sequence[str]) -> list[str]:
    """The overrides with `--config-dir` folders added to hydra.searchpath (as Hydra does)."""
    if not config_dirs:
        return list(overrides)
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+") != "hydra.searchpath"]
    entries = [*search_path(overrides), *(str(Path(d).absolute()) for d in config_dirs)]
    return [*rest, f"hydra.searchpath=[{','.join(entries)}]"]


def _keys(node: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key in node:
        name = f"{prefix}{key}"
        out.append(name)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            out += _keys(child, f"{name}.")
    return out


def check_keys(overrides: Sequence[str]) -> None:
    """Refuse an override of a key the schema does not have, naming the closest valid keys
    (Hydra would advise adding '+', which only moves the error)."""
    keys = _keys(OmegaConf.structured(RunConfig))
    known_groups = groups()
    search = search_path(overrides)
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or re.match(r"^(\+|~|hydra[./]|-)", override) or "@" in key:
            continue
        if key in known_groups:
            options = group_options(key, search)
            values = [v.strip() for v in override.split("=", 1)[1].split(",")]  # a sweep: several
            for value in values:
                if value not in options and not value.startswith(("choice(", "null")):
                    raise ConfigError(
                        f"{key}={value} is not an option of the config group {key}; "
                        f"choose one of: {', '.join(options)}"
                    )
            continue
        fields = [k for k in keys if k.startswith(f"{key}.") and "." not in k[len(key) + 1 :]]
        if fields:  # `model=batch`: a section given a value
            value = override.split("=", 1)[1]
            meant = [k for k, v in choices().items() if k in fields and value in v]
            example = f"{meant[0]}={value}" if meant else f"{fields[0]}=..."
            raise ConfigError(
                f"{override}: {key} is a section of settings, not one setting; "
                + (f"did you mean {example}? " if meant else "")
                + f"set its fields one by one, e.g. {example} (bnlab train --cfg job lists them)"
            )
        if key in keys:
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [
            k for k in keys if k.startswith(f"{parent}.") and "." not in k[len(parent) + 1 :]
        ]
        close = difflib.get_close_matches(key, keys + known_groups, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        if siblings:
            hint += f"keys of {parent}: {', '.join(k.rsplit('.', 1)[1] for k in siblings)}"
        else:
            hint += f"top-level keys: {', '.join(k for k in keys if '.' not in k)}"
        raise ConfigError(f"unknown config key '{key}' in '{override}'; {hint}")


def compose_dict(
    overrides: Sequence[str] = (), hydra: bool = False, config_dirs: Sequence[str] = ()
) -> DictConfig:
    """The composed config for these overrides (with Hydra's own node if `hydra`), with the
    configs of `config_dirs` (bnlab train --config-dir DIR) beside the packaged ones."""
    overrides = with_config_dirs(overrides, config_dirs)
    check_keys(overrides)
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as e:
        unquoted = [o for o in overrides if re.search(r"=[^'\"\[]*[=,]", o)]
        if unquoted and re.search(r"mismatched input '='|Ambiguous value", str(e)):
            key, _, value = unquoted[0].partition("=")
            several = "" if "=" in value else "lists several values: add -m to sweep them, or "
            raise ConfigError(
                f"{unquoted[0]}: {several}quote a value holding '=' or ',' for Hydra, "
                f"{key}='{value}'; in a shell: \"{key}='{value}'\""
            ) from None
        raise ConfigError(f"{hydra_message(e)} (overrides: {' '.join(overrides)})") from None


def hydra_message(error: Exception) -> str:
    """Hydra's composition error on one line ('Could not find 'optim/adamw'; available
    options in 'optim': adam, sgd'), without its search path."""
    text = str(error).split("Config search path")[0].replace("In 'config': ", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):  # a missing option
        lines = [f"{lines[0]}; {lines[1].lower()} {', '.join(lines[2:])}"]
    return " ".join(lines)


def unwritable(folder: str | Path) -> str | None:
    """Why bnlab could not create and write `folder`, or None when it can."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        return f"only {free // 1024} KiB free on its disk"
    return None


def compose(overrides: Sequence[str] = ()) -> RunConfig:
    """The validated RunConfig for command-line overrides, e.g.
    compose(["model.norm=batch", "optim=adam", "train.steps=500"]); raises ConfigError."""
    return load_config(compose_dict(overrides))
