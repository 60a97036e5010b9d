"""JSON Schemas (draft 2020-12) of every topic value, and validation against them.

The schemas live in the repository's top-level ``schemas/`` folder, one
``<name>.schema.json`` per topic value; the wheel ships the same files as
package data in ``stream/_schemas``. Low-volume topics (items, centres,
cf-deltas) are validated here with :func:`validate`; the click hot path uses
the hand-written, equivalent checks of :mod:`stream.wire.clicks` instead.

>>> names()
['assignment', 'centres', 'cf-delta', 'click', 'cluster-candidates', 'dlq', 'item']
>>> click = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1000}
>>> validate("click", click) is click
True
>>> validate("click", {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": "abc"})
Traceback (most recent call last):
...
stream.errors.BadRecord: ts: 'abc' is not of type 'integer'
>>> validate("click", {"event_id": "e1", "item_id": "i1", "ts": 1000})
Traceback (most recent call last):
...
stream.errors.BadRecord: missing field: user_id
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from stream.errors import BadRecord, ClusterstreamError

SUFFIX = ".schema.json"
MAX_REASON = 200

_PACKAGE_DIR = Path(__file__).resolve().parents[1] / "_schemas"  # installed wheel
_REPO_DIR = Path(__file__).resolve().parents[2] / "schemas"  # source / editable checkout


def schema_dir() -> Path:
    """The folder holding the ``*.schema.json`` files.

    The packaged copy (``stream/_schemas``) wins; a source or editable checkout
    falls back to the repository's ``schemas/``.
    """
    for folder in (_PACKAGE_DIR, _REPO_DIR):
        if (folder / f"click{SUFFIX}").is_file():
            return folder
    raise ClusterstreamError(f"schema folder not found (looked in {_PACKAGE_DIR} and {_REPO_DIR})")


@cache
def _names() -> tuple[str, ...]:
    return tuple(sorted(p.name.removesuffix(SUFFIX) for p in schema_dir().glob(f"*{SUFFIX}")))


def names() -> list[str]:
    """Names of all schemas, sorted (``"click"``, ``"cf-delta"``, ...)."""
    return list(_names())


@cache
def _load(name: str) -> dict:
    if name not in _names():
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(names())}")
    with open(schema_dir() / f"{name}{SUFFIX}", encoding="utf-8") as f:
        return json.load(f)


def load_schema(name: str) -> dict:
    """The schema ``name`` as a dict (a copy: mutating it changes nothing here)."""
    return copy.deepcopy(_load(name))


@cache
def validator(name: str) -> Draft202012Validator:
    """A cached draft 2020-12 validator for the schema ``name``."""
    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(name: str, value: dict) -> dict:
    """Return ``value`` unchanged if it matches schema ``name``, else raise.

    Raises :class:`stream.errors.BadRecord` whose ``reason`` is one line of at
    most ~200 characters: ``"<path>: <message>"``, or
    ``"missing field: <path>"`` for an absent required property.
    """
    error = best_match(validator(name).iter_errors(value))
    if error is None:
        return value
    raise BadRecord(_reason(error))


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shorten_instance(error: ValidationError, limit: int = 40) -> str:
    """``error.message`` with a long leading repr of the instance cut short."""
    shown = repr(error.instance)
    if len(shown) > limit and error.message.startswith(shown):
        return shown[: limit - 3] + "..." + error.message[len(shown) :]
    return error.message


def _reason(error: ValidationError) -> str:
    """A short, stable, one-line reason for ``error``."""
    path = _path(error.absolute_path)
    if error.validator == "required":
        missing = next((p for p in error.validator_value if p not in error.instance), "?")
        reason = f"missing field: {_path([*error.absolute_path, missing])}"
    elif error.validator == "anyOf":
        choices = [r for branch in error.validator_value for r in branch.get("required", [])]
        needs = f"needs one of: {', '.join(choices)}" if choices else "matches no allowed form"
        reason = f"{path}: {needs}" if path else needs
    else:
        message = _shorten_instance(error)
        reason = f"{path}: {message}" if path else message
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
