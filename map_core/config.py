"""YAML experiment configs: ``_base_`` inheritance, ``--set`` overrides, strict typed validation.

A config file is a YAML mapping. Any mapping in it (the whole file or one section) may say
``_base_: path`` or ``_base_: [path, ...]``: those files are loaded (paths relative to the including
file's folder, else to the current directory, else to the repository root) and deep-merged under
the mapping, whose own keys win. An ``others:`` mapping inside a section is merged on top of the
section last (Mamba3D style)::

    dataset:
      train: {_base_: ../_base_/dataset/shapenet.yaml, others: {subset: train}}

``load_config`` returns the merged mapping (a :class:`Config`); every leaf key remembers the file
that set it (``Config.provenance``). ``validate`` turns it into an :class:`ExperimentConfig`: the
engine sections (``optimizer``, ``scheduler``, ``train``, ``runtime``) become frozen dataclasses,
each defined beside the code that reads it and holding the only copy of its defaults (see
:func:`engine_sections`); so do the optional top-level sections a modality adds
(:data:`OPTIONAL_SCHEMAS`, e.g. the point clouds' ``fewshot:``, typed in ``pointcloud/fewshot.py``),
when a config has them. The open sections (``model``, ``task``, ``dataset.<split>``: ``NAME`` plus
the registered builder's keyword arguments) stay mappings, checked against the builder's
signature. Errors name the key path, the file and the closest valid key. The class count is
written once, as ``task.num_classes`` (see :func:`fill_class_count`). YAML 1.1 reads ``5e-4`` as a
string; this loader reads it as a float.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from map_core.errors import ConfigError
from map_core.registry import DATASETS, MODELS, TASKS, Registry, accepted_keys, closest

if TYPE_CHECKING:
    from map_core.engine.distributed import RuntimeConfig
    from map_core.engine.optim import OptimizerConfig, SchedulerConfig
    from map_core.engine.trainer import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_LINE = "command line"
SPLITS = ("train", "val", "test")
NAMED_SECTIONS = ("model", "task", "dataset")
FREE_SECTIONS = ("vars",)  # free-form values for YAML anchors
CLASS_COUNT_KEYS = ("num_classes", "cls_dim")  # what model / dataset builders call the class count


# ----------------------------------------------------------------------------- typed sections
def engine_sections() -> Dict[str, type]:
    """Top-level engine section -> its dataclass. Imported when called, not at module level,
    because the engine modules import this one."""
    from map_core.engine.distributed import RuntimeConfig
    from map_core.engine.optim import OptimizerConfig, SchedulerConfig
    from map_core.engine.trainer import TrainConfig

    return {"optimizer": OptimizerConfig, "scheduler": SchedulerConfig, "train": TrainConfig,
            "runtime": RuntimeConfig}


# Optional top-level sections a modality adds (``map_core.modalities.register_folds``, e.g. the point
# clouds' ``fewshot:``, typed in pointcloud/fewshot.py): section -> its dataclass, typed like the
# engine sections when a config has them. map_core never imports a modality; they register here.
OPTIONAL_SCHEMAS: Dict[str, type] = {}


def top_level_keys() -> Tuple[str, ...]:
    return NAMED_SECTIONS + tuple(engine_sections()) + tuple(OPTIONAL_SCHEMAS) + FREE_SECTIONS


def _source(provenance: Mapping[str, str], path: str) -> str:
    """The file (or 'command line') that set the dotted key ``path`` or the section holding it."""
    while path:
        if path in provenance:
            return provenance[path]
        path = path.rpartition(".")[0]
    return "<unknown>"


# ----------------------------------------------------------------------------- Config object
class Config(dict):
    """A dict with attribute access (nested) and, on the root, per-key provenance: a config as
    loaded, before :func:`validate`, and the open sections (model, task, dataset) after it."""

    def __init__(self, data: Optional[Mapping[str, Any]] = None, provenance: Optional[Dict[str, str]] = None):
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = value
        object.__setattr__(self, "provenance", dict(provenance or {}))

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __deepcopy__(self, memo: dict) -> "Config":
        return Config(copy.deepcopy(dict(self), memo), copy.deepcopy(self.provenance, memo))

    def source(self, path: str) -> str:
        """The file (or 'command line') that set the dotted key ``path``."""
        return _source(self.provenance, path)

    def to_dict(self) -> dict:
        """A plain nested dict/list copy (for YAML and checkpoints)."""
        return _plain(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, ExperimentConfig):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated config, read by attribute: ``cfg.train.ema.enable``, ``cfg.model["NAME"]``.

    ``optional`` holds the optional sections the config has (:data:`OPTIONAL_SCHEMAS`, each its
    dataclass), read by attribute too: ``cfg.fewshot.way``; ``cfg.fewshot`` is None when the config
    has no ``fewshot:`` section (then no folds).
    """

    task: Config
    model: Config
    dataset: Config
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    train: TrainConfig
    runtime: RuntimeConfig
    optional: Dict[str, Any] = field(default_factory=dict)
    vars: Config = field(default_factory=Config)
    provenance: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        """An optional section: its dataclass, or None when the config has none of a registered one."""
        if name.startswith("__"):  # copy / pickle probing, on instances not yet filled in too
            raise AttributeError(name)
        optional = self.__dict__.get("optional", {})
        if name in optional:
            return optional[name]
        if name in OPTIONAL_SCHEMAS:
            return None
        raise AttributeError(f"'{type(self).__name__}' has no section '{name}' (optional sections "
                             f"registered by the modalities: {', '.join(OPTIONAL_SCHEMAS) or 'none'})")

    def source(self, path: str) -> str:
        """The file (or 'command line') that set the dotted key ``path``."""
        return _source(self.provenance, path)

    def to_dict(self) -> dict:
        """Every section as plain dicts / lists, defaults included (for config.yaml and checkpoints)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "optional":
                out.update((name, _plain(section)) for name, section in value.items())
            elif f.name != "provenance" and not (f.name in FREE_SECTIONS and not value):
                out[f.name] = _plain(value)
        return out


# ----------------------------------------------------------------------------- YAML reading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` / ``1e3`` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse one ``--set`` value as YAML (numbers, bools, null, lists, mappings)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{_display(path)}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_display(path)}: expected a YAML mapping at top level, found {type(data).__name__}")
    return data


def _find_base(ref: str, including: Path) -> Path:
    candidates = [including.parent / ref, Path.cwd() / ref, REPO_ROOT / ref]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{_display(including)}: _base_ file '{ref}' not found (tried {tried})")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _merge(dst: dict, dst_prov: dict, src: dict, src_prov: dict, prefix: str) -> None:
    """Deep-merge ``src`` into ``dst`` (src wins); provenance follows the winning values."""
    for key, value in src.items():
        path = _join(prefix, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], dst_prov, value, {}, path)
        else:
            for stale in [p for p in dst_prov if p.startswith(path + ".")]:
                del dst_prov[stale]
            dst[key] = copy.deepcopy(value)
    dst_prov.update(src_prov)


def _load_file(path: Path, prefix: str, stack: Tuple[Path, ...]) -> Tuple[dict, dict]:
    if path in stack:
        chain = " -> ".join(_display(p) for p in stack + (path,))
        raise ConfigError(f"cycle in _base_ inheritance: {chain}")
    return _resolve_mapping(_read_yaml(path), prefix, path, stack + (path,))


def _resolve_mapping(node: dict, prefix: str, file: Path, stack: Tuple[Path, ...]) -> Tuple[dict, dict]:
    """Resolve ``_base_`` and ``others`` in ``node`` (and below); returns (data, provenance)."""
    out: dict = {}
    prov: dict = {}
    bases = node.get("_base_") or []
    for ref in [bases] if isinstance(bases, str) else bases:
        base, base_prov = _load_file(_find_base(ref, file), prefix, stack)
        _merge(out, prov, base, base_prov, prefix)
    own: dict = {}
    own_prov: dict = {}
    for key, value in node.items():
        if key in ("_base_", "others"):
            continue
        path = _join(prefix, key)
        if isinstance(value, dict):
            value, sub_prov = _resolve_mapping(value, path, file, stack)
            own_prov.update(sub_prov)
        own[key] = value
        own_prov[path] = _display(file)
    _merge(out, prov, own, own_prov, prefix)
    if isinstance(node.get("others"), dict):
        others, others_prov = _resolve_mapping(node["others"], prefix, file, stack)
        _merge(out, prov, others, others_prov, prefix)
    return out, prov


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config with its bases, then apply ``key.path=value`` overrides.

    Overrides may only set keys that exist or that the section's schema / builder accepts.
    Call :func:`validate` afterwards (once all plug-ins are imported) for full checking.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    data, prov = _load_file(path.resolve(), "", ())
    cfg = Config(data, prov)
    apply_overrides(cfg, overrides)
    return cfg


# ----------------------------------------------------------------------------- overrides
def _section_keys(cfg: Mapping[str, Any], parts: Sequence[str]) -> Optional[set]:
    """Keys the dataclass or builder of the section at ``parts`` accepts (None = anything)."""
    if not parts:
        return set(top_level_keys())
    schema = _schema_at(parts)
    if schema is not None:
        return {f.name for f in dataclasses.fields(schema)}
    node = _get(cfg, parts)
    registry = _registry_at(parts)
    if registry is None or not isinstance(node, Mapping) or node.get("NAME") not in registry:
        return set()
    keys = accepted_keys(registry.get(node["NAME"]))
    return None if keys is None else (keys - {"cfg"}) | {"NAME"}


def _schema_at(parts: Sequence[str]) -> Optional[type]:
    """The dataclass of the engine or optional section at ``parts`` (e.g. ``train.ema``), or None."""
    schema = engine_sections().get(parts[0]) or OPTIONAL_SCHEMAS.get(parts[0])
    for part in parts[1:]:
        if schema is None:
            return None
        sub = typing.get_type_hints(schema).get(part)
        schema = sub if dataclasses.is_dataclass(sub) else None
    return schema


def _registry_at(parts: Sequence[str]) -> Optional[Registry]:
    if list(parts) in (["model"], ["task"]):
        return MODELS if parts[0] == "model" else TASKS
    if len(parts) == 2 and parts[0] == "dataset":
        return DATASETS
    return None


def _get(cfg: Mapping[str, Any], parts: Sequence[str]) -> Any:
    node: Any = cfg
    for part in parts:
        node = node[part]
    return node


def _unknown_key(path: str, source: str, valid: Iterable[str]) -> ConfigError:
    parent, _, key = path.rpartition(".")
    valid = sorted(set(valid))
    hint = closest(key, valid)
    message = f"unknown key '{path}' (set in {source})"
    if hint:
        message += f"; did you mean '{_join(parent, hint)}'?"
    if valid:
        message += f" (valid keys here: {', '.join(valid)})"
    return ConfigError(message)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> None:
    """Apply ``a.b.c=value`` strings (values parsed as YAML); provenance 'command line'."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        parts = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, Mapping) and part not in node and _schema_at(parts[: depth + 1]):
                node[part] = Config()
            if not isinstance(node, Mapping) or part not in node:
                valid = node.keys() if isinstance(node, Mapping) else []
                raise _unknown_key(".".join(parts[: depth + 1]), COMMAND_LINE, valid)
            node = node[part]
        if not isinstance(node, Mapping):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:-1])}' is a value, not a section")
        known = _section_keys(cfg, parts[:-1])
        if parts[-1] not in node and known is not None and parts[-1] not in known:
            raise _unknown_key(key, COMMAND_LINE, set(node) | known)
        node[parts[-1]] = parse_value(text)
        for stale in [p for p in cfg.provenance if p.startswith(key + ".")]:
            del cfg.provenance[stale]
        cfg.provenance[key] = COMMAND_LINE


# ----------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str, cfg: Config) -> Any:
    """Check ``value`` against type ``tp``; ints become floats, numeric strings become floats,
    lists become tuples of their declared length."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    where = f"'{path}' (set in {cfg.source(path)})"
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path, cfg)
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        hint = closest(str(value), [str(a) for a in args])
        raise ConfigError(f"{where} expects one of {', '.join(map(str, args))}, got {value!r}"
                          + (f"; did you mean '{hint}'?" if hint else ""))
    if origin is tuple and args and args[-1] is not Ellipsis and isinstance(value, (list, tuple)):
        if len(value) != len(args):
            raise ConfigError(f"{where} expects {len(args)} values, got {len(value)}: {list(value)!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]", cfg) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{path}[{i}]", cfg) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    expected = _type_name(tp) if origin is None else _type_name(origin)
    raise ConfigError(f"{where} expects {expected}, got {value!r} ({type(value).__name__})")


def _validate_schema(values: Any, schema: type, path: str, cfg: Config) -> Any:
    """The ``schema`` dataclass built from the mapping ``values``; keys left out keep the
    dataclass's defaults."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path}' (set in {cfg.source(path)}) must be a mapping, got {values!r}")
    fields = [f.name for f in dataclasses.fields(schema)]
    for key in values:
        if key not in fields:
            raise _unknown_key(_join(path, key), cfg.source(_join(path, key)), fields)
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for name in fields:
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _validate_schema(values.get(name), hints[name], _join(path, name), cfg)
        elif name in values:
            kwargs[name] = _coerce(values[name], hints[name], _join(path, name), cfg)
    return schema(**kwargs)


def _validate_named(section: Any, registry: Registry, path: str, cfg: Config) -> None:
    if not isinstance(section, Mapping) or "NAME" not in section:
        raise ConfigError(f"'{path}' needs a 'NAME' key naming a registered {registry.kind}"
                          f" (registered: {', '.join(registry.names()) or 'none'})")
    name = section["NAME"]
    if name not in registry:
        hint = closest(str(name), registry.names())
        raise ConfigError(
            f"'{path}.NAME' (set in {cfg.source(path + '.NAME')}): unknown {registry.kind} '{name}'"
            + (f"; did you mean '{hint}'?" if hint else "")
            + f" (registered: {', '.join(registry.names()) or 'none'})"
        )
    builder = registry.get(name)
    keys = accepted_keys(builder)
    if keys is not None:
        valid = (keys - {"cfg"}) | {"NAME"}
        for key in section:
            if key not in valid:
                raise _unknown_key(_join(path, key), cfg.source(_join(path, key)), valid)
    try:
        hints = typing.get_type_hints(builder.__init__ if isinstance(builder, type) else builder)
    except Exception:  # unresolvable annotations: names were checked, types are the builder's job
        hints = {}
    for key, value in section.items():
        if hints.get(key) in (int, float, bool, str):
            section[key] = _coerce(value, hints[key], _join(path, key), cfg)


def fill_class_count(cfg: Config | ExperimentConfig) -> None:
    """Write the class count once, as ``task.num_classes``: it fills the model's ``num_classes``
    or ``cls_dim`` and each dataset's ``num_classes``, where their builders take that key. A value
    given there as well must agree (ConfigError naming both keys and files). ``validate`` calls it;
    so does a modality that changes the class count of a validated config (few-shot folds)."""
    count = cfg.task.get("num_classes")
    if count is None:
        return
    origin = cfg.source("task.num_classes")
    targets = [("model", cfg.model, MODELS)] + [(f"dataset.{s}", d, DATASETS) for s, d in cfg.dataset.items()]
    for path, section, registry in targets:
        keys = accepted_keys(registry.get(section["NAME"]))
        if keys is None:  # **kwargs: the key given, else (models: timm's convention) num_classes
            keys = set(section) | ({"num_classes"} if registry is MODELS else set())
        key = next((k for k in CLASS_COUNT_KEYS if k in keys), None)
        if key is None:
            continue
        if key in section and section[key] != count:
            raise ConfigError(
                f"the class count is given twice: task.num_classes={count} (set in {origin}) and "
                f"{path}.{key}={section[key]} (set in {cfg.source(f'{path}.{key}')}); give it once, as "
                f"task.num_classes (the model's and the datasets' class counts follow it)")
        if key not in section:
            section[key] = count
            cfg.provenance[f"{path}.{key}"] = f"{origin}, as task.num_classes"


def validate(cfg: Config) -> ExperimentConfig:
    """Check every key (name and type) of a loaded config; returns it typed, defaults filled.

    Raises ConfigError naming the key path, the file that set it and the closest valid key.
    """
    for key in cfg:
        if key not in top_level_keys():
            raise _unknown_key(key, cfg.source(key), top_level_keys())
    typed = {name: _validate_schema(cfg.get(name), schema, name, cfg) for name, schema in engine_sections().items()}
    optional = {name: _validate_schema(cfg[name], schema, name, cfg) for name, schema in OPTIONAL_SCHEMAS.items()
                if cfg.get(name) is not None}  # no fewshot: section (or fewshot: null), no folds
    _validate_named(cfg.get("model"), MODELS, "model", cfg)
    _validate_named(cfg.get("task"), TASKS, "task", cfg)
    datasets = cfg.get("dataset") or Config()
    if not isinstance(datasets, Mapping):
        raise ConfigError(f"'dataset' (set in {cfg.source('dataset')}) must map splits to datasets")
    for split, section in datasets.items():
        if split not in SPLITS:
            raise _unknown_key(f"dataset.{split}", cfg.source(f"dataset.{split}"), SPLITS)
        _validate_named(section, DATASETS, f"dataset.{split}", cfg)
    cfg["dataset"] = datasets
    fill_class_count(cfg)
    free = {name: cfg.get(name) or Config() for name in FREE_SECTIONS}
    return ExperimentConfig(model=cfg.model, task=cfg.task, dataset=cfg.dataset, **typed, optional=optional,
                            **free, provenance=dict(cfg.provenance))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> List[str]:
    """``'key.path: old -> new'`` for every leaf that differs between two nested mappings.

    A key present on one side only shows ``<unset>`` on the other.
    """
    missing = object()
    show = lambda value: "<unset>" if value is missing else repr(_plain(value))  # noqa: E731
    lines = []
    for key in list(old) + [k for k in new if k not in old]:
        path = _join(prefix, key)
        a, b = old.get(key, missing), new.get(key, missing)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += config_diff(a, b, path)
        elif a is missing or b is missing or _plain(a) != _plain(b):
            lines.append(f"{path}: {show(a)} -> {show(b)}")
    return lines


def dump_config(cfg: ExperimentConfig | Mapping[str, Any], path: str | Path) -> None:
    """Write the config as YAML (plain types, keys in order; a validated one with every default)."""
    Path(path).write_text(yaml.safe_dump(_plain(cfg), sort_keys=False), encoding="utf-8")
