"""YAML configs: ``_base_`` inheritance, ``--set`` overrides, strict validation against a schema.

A config file is a YAML mapping. Any mapping in it (the whole file or one section) may say
``_base_: path`` or ``_base_: [path, ...]``: those files are loaded (paths relative to the including
file's folder, else to the current directory, else to the repository root) and deep-merged under
the mapping, whose own keys win. An ``others:`` mapping inside a section is merged on top of the
section last (Mamba3D style)::

    dataset:
      train: {_base_: ../_base_/dataset/shapenet.yaml, others: {subset: train}}

The loader knows no section by name: :func:`load_config` and :func:`validate` are handed the
schema, a frozen dataclass whose fields are the top-level sections (the engine's is
``map_core.engine.schema.ExperimentConfig``). A field of a schema (or of a section) is

- a dataclass: a typed section; unknown keys are errors, values are coerced to the declared types
  and checked against the range of a :func:`number` field, keys left out keep the dataclass's defaults;
- :func:`named`: an open section ``{NAME: ..., **kwargs}`` whose keys are checked against the
  signature of the builder registered under ``NAME``, or with ``keys`` a mapping of such sections
  (``dataset: {train: ..., val: ...}``);
- :func:`free`: a mapping taken as it is (``vars:``, values for YAML anchors);
- :func:`per_key`: a mapping whose keys and values come from callables at validation time (one
  backend per registered op);
- :func:`optional_sections`: the extra top-level sections a callable lists (section -> dataclass),
  collected in a dict, for the sections that plug-ins register;
- :func:`provenance`: the file (or 'command line') that set each key;
- any other type: a value (bool, int, float, str, Literal, Optional, Tuple, List).

``load_config`` returns the merged mapping (a :class:`Config`); every leaf key remembers the file
that set it (``Config.provenance``). Errors name the key path, the file and the closest valid key.
YAML 1.1 reads ``5e-4`` as a string; this loader reads it as a float. A file must be UTF-8 with
string keys, and may not expand (through YAML aliases) to more than :data:`MAX_VALUES` values.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import operator
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import yaml

from map_core.errors import ConfigError
from map_core.registry import Registry, accepted_keys, closest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_LINE = "command line"
MAX_VALUES = 100_000  # values (mappings, lists and scalars) one YAML file may expand to
METADATA = "config"  # the dataclass-field metadata key of the kinds below


# ----------------------------------------------------------------------------- field kinds
@dataclass(frozen=True)
class Bounds:
    """The range of a number (each bound optional); a tuple's bounds hold for every item."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def _checks(self) -> List[Tuple[float, Callable[[float, float], bool], str]]:
        table = ((self.ge, operator.ge, ">="), (self.gt, operator.gt, ">"), (self.le, operator.le, "<="),
                 (self.lt, operator.lt, "<"))
        return [(bound, test, sign) for bound, test, sign in table if bound is not None]

    def holds(self, value: float) -> bool:
        return math.isfinite(value) and all(test(value, bound) for bound, test, _ in self._checks())

    def __str__(self) -> str:
        return " and ".join(f"{sign} {bound:g}" for bound, _, sign in self._checks())


@dataclass(frozen=True)
class Named:
    registry: Registry
    keys: Optional[Tuple[str, ...]] = None  # a mapping of named sections under these keys


@dataclass(frozen=True)
class Free:
    pass


@dataclass(frozen=True)
class PerKey:
    keys: Callable[[], Sequence[str]]
    values: Callable[[str], Sequence[str]]
    default: str


@dataclass(frozen=True)
class OptionalSections:
    sections: Callable[[], Mapping[str, type]]


@dataclass(frozen=True)
class Provenance:
    pass


def number(default: Any, ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
           lt: Optional[float] = None) -> Any:
    """A numeric field with its range, e.g. ``lr: float = number(1e-3, gt=0)``; None (for an
    Optional field) is always accepted."""
    return field(default=default, metadata={METADATA: Bounds(ge, gt, le, lt)})


def named(registry: Registry, keys: Optional[Tuple[str, ...]] = None) -> Any:
    """A field holding an open section checked against ``registry`` (or, with ``keys``, a mapping
    of such sections under those keys)."""
    return field(default_factory=lambda: Config(), metadata={METADATA: Named(registry, keys)})


def free() -> Any:
    """A field holding a mapping taken as it is."""
    return field(default_factory=lambda: Config(), metadata={METADATA: Free()})


def per_key(keys: Callable[[], Sequence[str]], values: Callable[[str], Sequence[str]], default: str) -> Any:
    """A field mapping each of ``keys()`` to one of ``values(key)`` (``default`` when left out)."""
    return field(default_factory=dict, metadata={METADATA: PerKey(keys, values, default)})


def optional_sections(sections: Callable[[], Mapping[str, type]]) -> Any:
    """A field collecting the top-level sections ``sections()`` lists that a config has."""
    return field(default_factory=dict, metadata={METADATA: OptionalSections(sections)})


def provenance() -> Any:
    """A field receiving the config's provenance (key path -> file)."""
    return field(default_factory=dict, compare=False, repr=False, metadata={METADATA: Provenance()})


def _kind(f: dataclasses.Field) -> Any:
    return f.metadata.get(METADATA)


def _source(provenance_map: Mapping[str, str], path: str) -> str:
    """The file (or 'command line') that set the dotted key ``path`` or the section holding it."""
    while path:
        if path in provenance_map:
            return provenance_map[path]
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
        return plain(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """``value`` as plain dicts / lists: a validated schema's sections by name (its optional
    sections at top level, empty free sections and provenance left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            kind, item = _kind(f), getattr(value, f.name)
            if isinstance(kind, OptionalSections):
                out.update((name, plain(section)) for name, section in item.items())
            elif not isinstance(kind, Provenance) and not (isinstance(kind, Free) and not item):
                out[f.name] = plain(item)
        return out
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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


def _check_tree(node: Any, where: str, path: str, sizes: Dict[int, int], open_nodes: Set[int]) -> int:
    """How many values ``node`` expands to (aliases counted at every use); raises on a non-string
    key or a node that contains itself."""
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigError(f"{where}: '{path or '<top>'}' contains itself (a recursive YAML alias)")
    open_nodes.add(id(node))
    items = node.items() if isinstance(node, dict) else enumerate(node)
    size = 1
    for key, child in items:
        if isinstance(node, dict) and not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} ({type(key).__name__}) under '{path or '<top>'}': "
                              f"config keys must be strings")
        size += _check_tree(child, where, f"{path}[{key}]" if isinstance(node, list) else _join(path, key),
                            sizes, open_nodes)
        if size > MAX_VALUES:
            raise ConfigError(f"{where}: expands to more than {MAX_VALUES:,} values (YAML aliases "
                              f"repeating large nodes?); a config is a few hundred values")
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def _read_yaml(path: Path) -> dict:
    where = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a YAML mapping at top level, found {type(data).__name__}")
    try:
        _check_tree(data, where, "", {}, set())
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
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


def _base_refs(node: dict, prefix: str, file: Path) -> List[str]:
    """The files ``node``'s ``_base_`` names: one path or a list of paths."""
    bases = node.get("_base_")
    refs = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
        raise ConfigError(f"{_display(file)}: '{_join(prefix, '_base_')}' must be a file path or a list of "
                          f"file paths, got {bases!r}")
    return refs


def _resolve_mapping(node: dict, prefix: str, file: Path, stack: Tuple[Path, ...]) -> Tuple[dict, dict]:
    """Resolve ``_base_`` and ``others`` in ``node`` (and below); returns (data, provenance)."""
    out: dict = {}
    prov: dict = {}
    for ref in _base_refs(node, prefix, file):
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
    others = node.get("others")
    if others is not None and not isinstance(others, dict):
        raise ConfigError(f"{_display(file)}: '{_join(prefix, 'others')}' must be a mapping, got {others!r}")
    if others:
        others, others_prov = _resolve_mapping(others, prefix, file, stack)
        _merge(out, prov, others, others_prov, prefix)
    return out, prov


def load_config(path: str | Path, schema: Optional[type] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config with its bases, then apply ``key.path=value`` overrides.

    With a ``schema`` (a dataclass, see the module docstring) an override may only set a key that
    the config has or that the schema (or the named section's builder) accepts; without one, any
    key. Call :func:`validate` afterwards (once every plug-in is imported) for full checking.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    data, prov = _load_file(path.resolve(), "", ())
    cfg = Config(data, prov)
    apply_overrides(cfg, overrides, schema)
    return cfg


# ----------------------------------------------------------------------------- the schema at a key path
@dataclass(frozen=True)
class _Value:
    """A value field, not a section."""

    type: Any


def _fields(schema: type) -> Dict[str, Tuple[Any, Any]]:
    """name -> (type, kind) of a dataclass's fields, provenance left out."""
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], _kind(f)) for f in dataclasses.fields(schema)
            if not isinstance(_kind(f), Provenance)}


def _optional_sections(schema: type) -> Dict[str, type]:
    return {name: sections for _, kind in _fields(schema).values() if isinstance(kind, OptionalSections)
            for name, sections in kind.sections().items()}


def _child(spec: Any, key: str) -> Any:
    """What the schema declares under ``key`` of the node declared by ``spec``: a dataclass, a
    field kind, a :class:`_Value`, or None (unknown)."""
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        fields = _fields(spec)
        if key in fields:
            tp, kind = fields[key]
            if isinstance(kind, OptionalSections):
                return None
            if kind is None or isinstance(kind, Bounds):
                return tp if dataclasses.is_dataclass(tp) else _Value(tp)
            return kind
        return _optional_sections(spec).get(key)
    if isinstance(spec, Named) and spec.keys is not None:
        return Named(spec.registry) if key in spec.keys else None
    if isinstance(spec, Free):
        return spec
    if isinstance(spec, PerKey):
        return _Value(str) if key in spec.keys() else None
    return None


def _valid_keys(spec: Any, node: Any) -> Optional[Set[str]]:
    """Keys the node declared by ``spec`` accepts (None: anything; a builder's keyword argument
    that holds a mapping, ``spec`` None: only the keys it has)."""
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        fields = {name for name, (_, kind) in _fields(spec).items() if not isinstance(kind, OptionalSections)}
        return fields | set(_optional_sections(spec))
    if isinstance(spec, Named):
        if spec.keys is not None:
            return set(spec.keys)
        if not isinstance(node, Mapping) or node.get("NAME") not in spec.registry:
            return {"NAME"}
        keys = accepted_keys(spec.registry.get(node["NAME"]))
        return None if keys is None else (keys - {"cfg"}) | {"NAME"}
    if isinstance(spec, PerKey):
        return set(spec.keys())
    return None if isinstance(spec, Free) else set()


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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def apply_overrides(cfg: Config, overrides: Sequence[str], schema: Optional[type] = None) -> None:
    """Apply ``a.b.c=value`` strings (values parsed as YAML); provenance 'command line'. With a
    ``schema``, keys are checked against it (see :func:`load_config`)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        parts = key.split(".")
        node: Any = cfg
        spec: Any = schema if schema is not None else Free()
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[: depth + 1])
            child = _child(spec, part)
            if isinstance(child, _Value):
                raise ConfigError(f"--set {item}: '{here}' is a value ({_type_name(child.type)}), not a section")
            if part not in node:
                if child is None:
                    raise _unknown_key(here, COMMAND_LINE, set(node) | (_valid_keys(spec, node) or set()))
                node[part] = Config()
            node, spec = node[part], child
            if not isinstance(node, Mapping):
                raise ConfigError(f"--set {item}: '{here}' is a value ({node!r}), not a section")
        valid = _valid_keys(spec, node)
        if parts[-1] not in node and valid is not None and parts[-1] not in valid:
            raise _unknown_key(key, COMMAND_LINE, set(node) | valid)
        node[parts[-1]] = parse_value(text)
        for stale in [p for p in cfg.provenance if p.startswith(key + ".")]:
            del cfg.provenance[stale]
        cfg.provenance[key] = COMMAND_LINE


# ----------------------------------------------------------------------------- validation
def _check_bounds(value: Any, limits: Optional[Bounds], where: str) -> None:
    if limits is None or value is None:
        return
    for item in value if isinstance(value, tuple) else (value,):
        if not limits.holds(item):
            finite = "" if math.isfinite(item) else "finite and "
            raise ConfigError(f"{where} must be {finite}{limits}, got {item!r}")


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


def _validate_section(values: Any, schema: type, path: str, cfg: Config) -> Any:
    """The ``schema`` dataclass built from the mapping ``values``; keys left out keep the
    dataclass's defaults."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path}' (set in {cfg.source(path)}) must be a mapping, got {values!r}")
    fields, optional, accepted = _fields(schema), _optional_sections(schema), _valid_keys(schema, values)
    for key in values:
        if key not in accepted:
            raise _unknown_key(_join(path, key), cfg.source(_join(path, key)), accepted)
    kwargs: Dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        kind, item_path = _kind(f), _join(path, f.name)
        if isinstance(kind, Provenance):
            kwargs[f.name] = dict(cfg.provenance)
        elif isinstance(kind, OptionalSections):
            kwargs[f.name] = {name: _validate_section(values[name], tp, name, cfg) for name, tp in optional.items()
                              if values.get(name) is not None}
        elif isinstance(kind, Named):
            kwargs[f.name] = _validate_named(values.get(f.name), kind, item_path, cfg)
        elif isinstance(kind, Free):
            kwargs[f.name] = values.get(f.name) or Config()
            if not isinstance(kwargs[f.name], Mapping):
                raise ConfigError(f"'{item_path}' (set in {cfg.source(item_path)}) must be a mapping, "
                                  f"got {kwargs[f.name]!r}")
        elif isinstance(kind, PerKey):
            kwargs[f.name] = _validate_per_key(values.get(f.name), kind, item_path, cfg)
        elif dataclasses.is_dataclass(fields[f.name][0]):
            kwargs[f.name] = _validate_section(values.get(f.name), fields[f.name][0], item_path, cfg)
        elif f.name in values:
            kwargs[f.name] = _coerce(values[f.name], fields[f.name][0], item_path, cfg)
            _check_bounds(kwargs[f.name], kind, f"'{item_path}' (set in {cfg.source(item_path)})")
    return schema(**kwargs)


def _validate_per_key(values: Any, spec: PerKey, path: str, cfg: Config) -> Dict[str, str]:
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path}' (set in {cfg.source(path)}) must be a mapping, got {values!r}")
    keys = list(spec.keys())
    out = {}
    for key, value in values.items():
        if key not in keys:
            raise _unknown_key(_join(path, key), cfg.source(_join(path, key)), keys)
        choices = list(spec.values(key))
        if value not in choices:
            hint = closest(str(value), choices)
            raise ConfigError(f"'{_join(path, key)}' (set in {cfg.source(_join(path, key))}) expects one of "
                              f"{', '.join(choices)}, got {value!r}" + (f"; did you mean '{hint}'?" if hint else ""))
    for key in keys:
        out[key] = values.get(key, spec.default)
    return out


def _validate_builder_section(section: Any, registry: Registry, path: str, cfg: Config) -> Config:
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
    valid = _valid_keys(Named(registry), section)
    if valid is not None:
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
    return section


def _validate_named(section: Any, spec: Named, path: str, cfg: Config) -> Config:
    if spec.keys is None:
        return _validate_builder_section(section, spec.registry, path, cfg)
    section = Config() if section is None else section
    if not isinstance(section, Mapping):
        raise ConfigError(f"'{path}' (set in {cfg.source(path)}) must map {', '.join(spec.keys)} to "
                          f"{spec.registry.kind} sections, got {section!r}")
    for key, item in section.items():
        if key not in spec.keys:
            raise _unknown_key(_join(path, key), cfg.source(_join(path, key)), spec.keys)
        _validate_builder_section(item, spec.registry, _join(path, key), cfg)
    return section


def validate(cfg: Config, schema: type) -> Any:
    """Check every key (name, type, range) of a loaded config against ``schema`` (a dataclass, see
    the module docstring); returns the ``schema`` instance, defaults filled.

    Raises ConfigError naming the key path, the file that set it and the closest valid key.
    """
    return _validate_section(cfg, schema, "", cfg)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> List[str]:
    """``'key.path: old -> new'`` for every leaf that differs between two nested mappings.

    A key present on one side only shows ``<unset>`` on the other.
    """
    missing = object()
    show = lambda value: "<unset>" if value is missing else repr(plain(value))  # noqa: E731
    lines = []
    for key in list(old) + [k for k in new if k not in old]:
        path = _join(prefix, key)
        a, b = old.get(key, missing), new.get(key, missing)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += config_diff(a, b, path)
        elif a is missing or b is missing or plain(a) != plain(b):
            lines.append(f"{path}: {show(a)} -> {show(b)}")
    return lines


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the config as YAML (plain types, keys in order; a validated one with every default)."""
    Path(path).write_text(yaml.safe_dump(plain(cfg), sort_keys=False), encoding="utf-8")
