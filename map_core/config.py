"""YAML experiment configs: ``_base_`` inheritance, ``--set`` overrides, strict typed validation.

A config file is a YAML mapping. Any mapping in it (the whole file or one section) may say
``_base_: path`` or ``_base_: [path, ...]``: those files are loaded (paths relative to the including
file's folder, else to the current directory, else to the repository root) and deep-merged under
the mapping, whose own keys win. An ``others:`` mapping inside a section is merged on top of the
section last (Mamba3D style)::

    dataset:
      train: {_base_: ../_base_/dataset/shapenet.yaml, others: {subset: train}}

Every leaf key remembers the file that set it (``Config.provenance``), so validation errors name
the key path, the file and the closest valid key. The engine sections (``optimizer``,
``scheduler``, ``train``, ``runtime``; optional ones a modality adds, e.g. ``fewshot``) are typed
by dataclasses; sections with a ``NAME`` (``model``, ``task``, ``dataset.<split>``) are checked
against the signature of the registered builder. YAML 1.1 reads ``5e-4`` as a string; this loader
reads it as a float.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from map_core.errors import ConfigError
from map_core.registry import DATASETS, MODELS, TASKS, Registry, accepted_keys, closest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_LINE = "command line"
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- typed sections
@dataclass
class OptimizerConfig:
    """``optimizer:``; ``lr_batch_base: 512`` scales lr by total_batch_size / 512."""

    NAME: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    layer_decay: Optional[float] = None
    lr_batch_base: Optional[int] = None


@dataclass
class SchedulerConfig:
    """``scheduler:``; warm-up then cosine, stepped per optimizer update."""

    NAME: str = "cosine"
    epochs: int = 300
    warmup_epochs: float = 10
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6


@dataclass
class EmaConfig:
    enable: bool = False
    decay: float = 0.9999
    warmup: bool = False


@dataclass
class TrainConfig:
    """``train:``; batch sizes are totals over all ranks and accumulation steps."""

    total_batch_size: int = 128
    val_batch_size: Optional[int] = None
    accum_steps: int = 1
    clip_grad: Optional[float] = None
    precision: str = "auto"
    ema: EmaConfig = field(default_factory=EmaConfig)
    num_workers: int = 4
    log_every: int = 20
    save_every: int = 0
    val_every: int = 1
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: Optional[int] = None
    compile: bool = False  # torch.compile each repeated block (map_core.compile)
    compile_mode: Optional[str] = None  # a torch.compile mode, e.g. max-autotune-no-cudagraphs
    cuda_graphs: bool = False  # replay forward, loss and backward from CUDA graphs (map_core.graphs)


@dataclass
class BackendsConfig:
    """``runtime.backends:``; per op ``auto`` or a registered name (``map_core.backends``): ``auto``
    takes the project's Triton kernels on CUDA and the PyTorch references elsewhere."""

    scan: str = "auto"
    conv: str = "auto"
    fps: str = "auto"
    knn: str = "auto"


@dataclass
class RuntimeConfig:
    """``runtime:``; process-level switches."""

    find_unused_parameters: bool = False
    device: str = "auto"
    backends: BackendsConfig = field(default_factory=BackendsConfig)


SCHEMAS: Dict[str, type] = {
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}
# Optional top-level sections a modality adds (``map_core.modalities.register_folds``, e.g. the point
# clouds' ``fewshot:``): typed like the sections above, validated when a config has them.
OPTIONAL_SCHEMAS: Dict[str, type] = {}
NAMED_SECTIONS = ("model", "task", "dataset")
FREE_SECTIONS = ("vars",)  # free-form values for YAML anchors
TOP_LEVEL = tuple(SCHEMAS) + NAMED_SECTIONS + FREE_SECTIONS


# ----------------------------------------------------------------------------- Config object
class Config(dict):
    """A dict with attribute access (nested) and, on the root, per-key provenance."""

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
        while path:
            if path in self.provenance:
                return self.provenance[path]
            path = path.rpartition(".")[0]
        return "<unknown>"

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
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
    """Keys the schema or builder of the section at ``parts`` accepts (None = anything)."""
    if not parts:
        return set(TOP_LEVEL) | set(OPTIONAL_SCHEMAS)
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
    schema = SCHEMAS.get(parts[0]) or OPTIONAL_SCHEMAS.get(parts[0])
    for part in parts[1:]:
        if schema is None:
            return None
        hints = typing.get_type_hints(schema)
        sub = hints.get(part)
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
    """Check ``value`` against type ``tp``; ints become floats, numeric strings become floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path, cfg)
    if origin in (list, List, tuple) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        return [_coerce(v, item, f"{path}[{i}]", cfg) for i, v in enumerate(value)]
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
    raise ConfigError(
        f"'{path}' (set in {cfg.source(path)}) expects {expected}, got {value!r} ({type(value).__name__})"
    )


def _validate_schema(values: Any, schema: type, path: str, cfg: Config) -> dict:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path}' (set in {cfg.source(path)}) must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in values:
        if key not in fields:
            raise _unknown_key(_join(path, key), cfg.source(_join(path, key)), fields)
    hints = typing.get_type_hints(schema)
    out = {}
    for name, f in fields.items():
        sub_path = _join(path, name)
        if dataclasses.is_dataclass(hints[name]):
            out[name] = _validate_schema(values.get(name), hints[name], sub_path, cfg)
        elif name in values:
            out[name] = _coerce(values[name], hints[name], sub_path, cfg)
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[name] = default
    return out


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


def validate(cfg: Config) -> Config:
    """Check every key (name and type) and fill engine defaults in place; returns ``cfg``.

    Raises ConfigError naming the key path, the file that set it and the closest valid key.
    """
    for key in cfg:
        if key not in TOP_LEVEL and key not in OPTIONAL_SCHEMAS:
            raise _unknown_key(key, cfg.source(key), TOP_LEVEL + tuple(OPTIONAL_SCHEMAS))
    present = {name: schema for name, schema in OPTIONAL_SCHEMAS.items() if name in cfg}
    for name, schema in {**SCHEMAS, **present}.items():
        cfg[name] = _validate_schema(cfg.get(name), schema, name, cfg)
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
    return cfg


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


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML (plain types, keys in insertion order)."""
    Path(path).write_text(yaml.safe_dump(_plain(cfg), sort_keys=False), encoding="utf-8")
