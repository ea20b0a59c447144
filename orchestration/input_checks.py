"""Checks for text that arrives from a web form, a CLI file or a workflow input.

They live apart from the pydantic models (orchestration.types) so the edge and the workers
apply the same rules: a model URI that would make a worker reach another host, a text made only
of invisible characters, a name with a NUL byte or a path component the filesystem cannot hold
are refused with a message that names the field and says what to do, before any I/O.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

# Longest file or folder name most filesystems accept (NAME_MAX); longer ones fail with
# "[Errno 36] File name too long" deep inside a worker instead of a message naming the field.
MAX_PATH_PART = 255
# Unicode categories that draw nothing: controls, formats (zero-width space/joiners, BOM,
# bidi marks), separators, unassigned and private-use code points, and combining marks alone.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"}

# What a model_uri may be: a registered model of the configured MLflow server
# (models:/<name>/<version>, models:/<name>@<alias>), a run's artifact on it
# (runs:/<run id>/<path>), a finished run's folder in the checkpoint store (a path, or the
# store's own object-store URI), or a model folder under the served roots. No host may be named:
# `models://host/...`, http(s):, file:, mlflow-artifacts: and every other scheme are refused.
_REGISTERED = re.compile(r"models:/[A-Za-z0-9_.-]{1,200}(/[0-9]{1,9}|/latest|@[A-Za-z0-9_-]{1,64})")
_RUN_ARTIFACT = re.compile(r"runs:/[0-9a-f]{32}(/[A-Za-z0-9_.-]+)*/?")
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")
_MODEL_URI_HELP = (
    "use a finished run's model: models:/<name>/<version> (or @<alias>) or runs:/<run id>/model "
    "of the configured MLflow server, or its folder in the checkpoint store"
)


def has_visible(text: str) -> bool:
    """True when `text` holds at least one character that draws something."""
    return any(unicodedata.category(c) not in _INVISIBLE for c in text)


def control_character(value: str) -> str | None:
    """The first control character of `value` (NUL, newline, escape...) as `U+XXXX`, or None."""
    for c in value:
        if unicodedata.category(c) == "Cc":
            return f"U+{ord(c):04X}"
    return None


def check_name(field: str, value: str) -> str:
    """A name or path a worker will open: no control characters, no over-long component."""
    bad = control_character(value)
    if bad is not None:
        raise ValueError(f"{field} contains a control character ({bad}); remove it")
    if not value.strip():
        raise ValueError(f"{field} is blank; give a name or leave it unset")
    longest = max((len(part) for part in re.split(r"[/\\]", value)), default=0)
    if longest > MAX_PATH_PART:
        raise ValueError(
            f"{field} has a name part of {longest} characters; file and folder names hold at "
            f"most {MAX_PATH_PART}"
        )
    return value


def model_uri_scheme(uri: str) -> str | None:
    """The URI scheme of `uri` (`models`, `s3`...), or None for a plain path."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if match is None or (len(match.group(1)) == 1 and uri[2:3] in ("\\", "/")):  # C:\ or C:/
        return None
    return match.group(1).lower()


def check_model_uri(uri: str) -> str:
    """Refuse a model_uri that names anything but the configured servers' models (see above)."""
    check_name("model_uri", uri)
    if ".." in re.split(r"[/\\]", uri) and model_uri_scheme(uri) is not None:
        raise ValueError(f"model_uri: '..' is not allowed in {uri!r}; {_MODEL_URI_HELP}")
    scheme = model_uri_scheme(uri)
    if scheme is None:
        return uri
    if scheme == "models" and _REGISTERED.fullmatch(uri):
        return uri
    if scheme == "runs" and _RUN_ARTIFACT.fullmatch(uri):
        return uri
    if scheme in OBJECT_STORE_SCHEMES and uri.startswith(f"{scheme}://"):
        return uri  # only the configured checkpoint store's own URIs are served (the worker checks)
    shown = uri if len(uri) <= 80 else uri[:77] + "..."
    raise ValueError(
        f"model_uri: {shown!r} is not a model of this deployment (scheme {scheme!r}; no other "
        f"host, file: or http: URI is served); {_MODEL_URI_HELP}"
    )


def read_request(path: str, flag: str, model: type[M], hint: str) -> M:
    """A request the user wrote as a JSON file, validated as `model`; a file that is not JSON
    is named with its flag and what to write instead."""
    with open(path, encoding="utf-8") as f:
        try:
            payload = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{flag}: {path} is not JSON ({err}); write {hint} as JSON") from None
    return model.model_validate(payload)
