"""Reading YAML the way DVC writes it, and refusing YAML that is a weapon.

DVC (ruamel.yaml) reads and rewrites ``params.yaml`` as YAML 1.2, where
``off``, ``no`` and ``yes`` are strings and ``1e-05`` is a float; PyYAML's
default resolvers are YAML 1.1, where ``off`` is ``False`` and ``1e-05`` a
string. After ``dvc exp run -S ...`` rewrote the file, Aegis read
``privacy: off`` as a boolean. :func:`load_yaml` resolves plain scalars by the
YAML 1.2 core schema instead, so Aegis and DVC read the same file alike.

It also refuses, before anything walks the parsed tree:

- aliases (``*a``): an alias bomb expands a few hundred bytes into billions
  of nodes;
- duplicate keys in a mapping (YAML forbids them; PyYAML keeps the last);
- anything deeper than Python's recursion limit, and other tags than the
  core schema's (no Python objects);
- a scalar over :data:`SCALAR_LIMIT` characters.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError


class YamlRefused(ValueError):
    """The document is not YAML Aegis reads (``line`` is 1-based, or None)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


# No setting needs more; a 5000-digit integer would otherwise stop int() itself.
SCALAR_LIMIT = 4096

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Core12Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema, no aliases and no duplicate keys."""

    yaml_implicit_resolvers: ClassVar[dict] = {}

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, "aliases are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_scalar(self, node):  # type: ignore[override]
        value = super().construct_scalar(node)
        if len(value) > SCALAR_LIMIT:
            raise ConstructorError(
                None, None, f"a value over {SCALAR_LIMIT} characters", node.start_mark
            )
        return value

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: construct_mapping refuses it
                    continue
                if duplicate:
                    raise ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def _first_chars(pattern: re.Pattern[str], chars: str) -> None:
    for ch in chars:
        _Core12Loader.yaml_implicit_resolvers.setdefault(ch, []).append((TAGS[pattern], pattern))


TAGS = {
    _BOOL: "tag:yaml.org,2002:bool",
    _NULL: "tag:yaml.org,2002:null",
    _INT: "tag:yaml.org,2002:int",
    _FLOAT: "tag:yaml.org,2002:float",
}
_first_chars(_BOOL, "tTfF")
_first_chars(_NULL, "~nN")
_Core12Loader.yaml_implicit_resolvers.setdefault("", []).append((TAGS[_NULL], _NULL))
_first_chars(_INT, "-+0123456789")
_first_chars(_FLOAT, "-+0123456789.")


def _bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # YAML 1.2: a leading 0 is not octal


def _float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


def _null(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> None:
    loader.construct_scalar(node)
    return None


_Core12Loader.add_constructor("tag:yaml.org,2002:bool", _bool)
_Core12Loader.add_constructor("tag:yaml.org,2002:int", _int)
_Core12Loader.add_constructor("tag:yaml.org,2002:float", _float)
_Core12Loader.add_constructor("tag:yaml.org,2002:null", _null)
# No timestamps, binary, sets, ordered maps or merge keys: plain strings instead.
for _tag in ("timestamp", "binary", "set", "omap", "pairs", "merge", "value"):
    _Core12Loader.yaml_constructors.pop(f"tag:yaml.org,2002:{_tag}", None)


def load_yaml(text: str) -> Any:
    """Parses one YAML document by the 1.2 core schema (see the module docstring).

    Raises:
        YamlRefused: Not valid YAML, an alias, a duplicate key, an unknown tag,
            or nested too deeply; ``line`` names where, when known.
    """
    loader = _Core12Loader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YamlRefused("nested too deeply") from None
    except ValueError:  # int() or float() of a value no setting has
        raise YamlRefused("a value that is not a number Aegis reads") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "not valid YAML"
        if problem.startswith("could not determine a constructor"):
            problem = "unsupported tag"
        raise YamlRefused(problem, line) from None
    except yaml.YAMLError:
        raise YamlRefused("not valid YAML") from None
    finally:
        loader.dispose()
