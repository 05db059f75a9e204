"""The one reader of YAML a user gives: a study file, a ``--set KEY=VALUE`` value.

PyYAML's SafeLoader keeps YAML from building arbitrary objects, but not from being
expensive or ambiguous. On top of it this reader refuses, in one line that names the input:

- a file over :func:`max_config_bytes` (``LIGHTLAYERS_MAX_CONFIG_BYTES``, 1 MiB by default),
  before it is read: parsing is pure Python, about a second per megabyte;
- aliases that would expand to more than :data:`MAX_NODES` values ("billion laughs": 1 KB of
  nested aliases is a billion values once anything walks or prints them), counted while the
  document is composed, before anything is built;
- nesting deeper than :data:`MAX_DEPTH` (the composer recurses; 1 KB of ``[`` would exhaust
  Python's stack);
- a key given twice in one mapping, at any depth (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lightlayers.schema import ConfigError, shown

DEFAULT_MAX_CONFIG_BYTES = 1 << 20
# A study file has a few hundred values; these leave room for a hundredfold larger one.
MAX_NODES = 100_000
MAX_DEPTH = 100

_MERGE = "tag:yaml.org,2002:merge"


def max_config_bytes() -> int:
    """The size limit of a config file: ``LIGHTLAYERS_MAX_CONFIG_BYTES`` or 1 MiB."""
    text = os.environ.get("LIGHTLAYERS_MAX_CONFIG_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_CONFIG_BYTES
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ConfigError(f"LIGHTLAYERS_MAX_CONFIG_BYTES: expected a positive number of bytes, "
                          f"got {shown(text)}; unset it for the default of 1 MiB")
    return limit


class _Refused(Exception):
    """Input this reader will not build; the message is one line without the input's name."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts values while composing (aliases at their expanded size), bounds
    the nesting depth and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._count = 0  # values composed so far, an alias counting as all the values it names
        self._aliases = 0
        self._sizes: dict[str, int] = {}  # expanded size of each finished anchored value
        self._path: list[str] = []  # keys and indexes leading to the value being composed

    def _grow(self, n: int, mark: yaml.Mark) -> None:
        self._count += n
        if self._count <= MAX_NODES:
            return
        if self._aliases:
            raise _Refused(f"line {mark.line + 1}: aliases expand to over {MAX_NODES:,} values; "
                           "write the values out instead of nesting aliases")
        raise _Refused(f"line {mark.line + 1}: over {MAX_NODES:,} values; a study's settings "
                       "take a few hundred")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            size = self._sizes.get(event.anchor)
            if size is None and event.anchor in self.anchors:
                raise _Refused(f"line {event.start_mark.line + 1}: alias "
                               f"*{shown(event.anchor, quote=False)} is used inside its own "
                               "anchor, so the value would contain itself")
            node = super().compose_node(parent, index)  # an undefined alias: PyYAML's error
            self._aliases += 1
            self._grow(size or 0, event.start_mark)
            return node
        if len(self._path) >= MAX_DEPTH:
            raise _Refused(f"line {event.start_mark.line + 1}: values nested deeper than "
                           f"{MAX_DEPTH} levels")
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
            self._path.append(index.value)
        elif isinstance(parent, yaml.SequenceNode):
            self._path.append(f"[{index}]")
        else:  # the document itself, or a mapping's key
            self._path.append("")
        start = self._count
        try:
            node = super().compose_node(parent, index)
        finally:
            self._path.pop()
        self._grow(1, event.start_mark)
        if event.anchor is not None:
            self._sizes[event.anchor] = self._count - start
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, yaml.Mark] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue  # a non-text key is refused later; merged keys may be overridden
            ident = self._key_identity(key)
            first = seen.setdefault(ident, key.start_mark)
            if first is not key.start_mark:
                raise _Refused(f"{self._where(key.value)}: set twice, "
                               f"{_lines(first, key.start_mark)}; keep one")
        return node

    def _key_identity(self, key: yaml.ScalarNode) -> Any:
        """What the key becomes in the dict (``1``, ``0x1`` and ``true`` are one key there),
        without constructing it through the object cache, which must stay empty for later."""
        try:
            if key.tag == "tag:yaml.org,2002:int":
                return self.construct_yaml_int(key)
            if key.tag == "tag:yaml.org,2002:float":
                return self.construct_yaml_float(key)
            if key.tag == "tag:yaml.org,2002:bool":
                return self.construct_yaml_bool(key)
        except (ValueError, IndexError, KeyError):
            pass  # construction reports the bad scalar with its position
        if key.tag == "tag:yaml.org,2002:null":
            return None
        return (key.tag, key.value)

    def _where(self, key: str) -> str:
        parts = [p for p in self._path if p] + [key]
        text = ".".join(parts).replace(".[", "[")
        return shown(text, quote=False)


def _checked_scalar(tag: str) -> Any:
    """PyYAML's constructor for ``tag``, its crashes on malformed text (``!!int`` with no
    digits: IndexError; ``!!bool x``: KeyError; ``!!timestamp x``: AttributeError) and its
    ValueErrors turned into a YAML error that says where."""
    original = yaml.SafeLoader.yaml_constructors[tag]

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        try:
            return original(loader, node)
        except (ValueError, IndexError, KeyError, AttributeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown(node.value)} is not a valid !!{tag.rsplit(':', 1)[-1]}",
                node.start_mark) from None

    return construct


for _tag in ("int", "float", "bool", "timestamp"):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}",
                                   _checked_scalar(f"tag:yaml.org,2002:{_tag}"))


def _lines(first: yaml.Mark, second: yaml.Mark) -> str:
    if first.line == second.line:
        return f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
    return f"lines {first.line + 1} and {second.line + 1}"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one short line: the problem and where."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if not problem:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        return shown(lines[0] if lines else type(e).__name__, quote=False, limit=120)
    text = shown(problem, quote=False, limit=120)
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return text


def load_yaml(text: str, name: str) -> Any:
    """``text`` read as YAML by the bounded safe loader; ``name`` starts every error
    (a file's path, ``--set 'lr=[1'``)."""
    limit = max_config_bytes()
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ConfigError(f"{name}: {size:,} bytes, over the {limit:,}-byte limit for a "
                          "config; a study's settings take a few KB (raise "
                          "LIGHTLAYERS_MAX_CONFIG_BYTES if this one is meant)")
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters at once
        return loader.get_single_data()
    except _Refused as e:
        raise ConfigError(f"{name}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML: {_yaml_problem(e)}") from e
    except ValueError as e:  # PyYAML's own for a bad !!int, an impossible date, ...
        raise ConfigError(f"{name}: not valid YAML: {shown(str(e), quote=False, limit=120)}"
                          ) from e
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: Path) -> Any:
    """A config file's YAML (see :func:`load_yaml`), refusing a folder, a missing or special
    file, one over the size limit (before reading it) and one that is not UTF-8."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a YAML file; give the .yaml "
                          "file inside it")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file; give a .yaml file")
    limit = max_config_bytes()
    with path.open("rb") as f:
        # One byte over the limit is enough to refuse, whatever the file claims or grows to.
        data = f.read(limit + 1)
    if len(data) > limit:
        size = max(path.stat().st_size, len(data))
        raise ConfigError(f"{path}: {size:,} bytes, over the {limit:,}-byte limit for a config "
                          "file; a study's settings take a few KB (raise "
                          "LIGHTLAYERS_MAX_CONFIG_BYTES if this file is meant)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})"
                          ) from None
    return load_yaml(text, str(path))
