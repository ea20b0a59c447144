"""How payloads cross Temporal: pydantic models as JSON, with bad input failing at once.

A payload that does not validate (NaN in a numeric field, a model_uri naming another host, an
invisible text...) can never validate on a retry: decoding it raises a non-retryable
ApplicationError naming the fields, so the workflow or activity that receives it fails at once
with that message, instead of failing its task over and over until the execution times out.

Every JSON payload carries its sender's SCHEMA_VERSION (orchestration.versioning) in its
metadata. When a payload does not decode and its sender's schema is newer than the receiver's
(a client upgraded before the workers: fields the workers do not know), the error says so and
names the fix, "client schema v2 is newer than this worker's v1: upgrade the workers", and is
final too: no retry on these workers could decode it (docs/deploy.md, "Rolling upgrades").
"""

from __future__ import annotations

from typing import Any

import temporalio.api.common.v1
from pydantic import ValidationError
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.exceptions import ApplicationError

from orchestration.types import cap_error
from orchestration.versioning import SCHEMA_METADATA_KEY, SCHEMA_VERSION

# The error type workflows and activities already treat as final (workflows.NON_RETRYABLE).
BAD_INPUT_TYPE = "ConfigError"
# The error type of input from a sender with a newer schema than this worker's.
VERSION_MISMATCH_TYPE = "SchemaVersionMismatch"


def describe(err: ValidationError) -> str:
    """`field: message` for every problem, one line, without echoing the input values."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'input'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )


def sender_schema(payload: temporalio.api.common.v1.Payload) -> int | None:
    """The SCHEMA_VERSION its sender stamped on a payload; None if unstamped (not ours)."""
    stamp = payload.metadata.get(SCHEMA_METADATA_KEY, b"")
    return int(stamp) if stamp.isdigit() else None


class _CheckedJSON(PydanticJSONPlainPayloadConverter):
    def __init__(self, schema_version: int) -> None:
        super().__init__()
        self.schema_version = schema_version

    def to_payload(self, value: Any) -> temporalio.api.common.v1.Payload | None:
        payload = super().to_payload(value)
        if payload is not None:
            payload.metadata[SCHEMA_METADATA_KEY] = str(self.schema_version).encode()
        return payload

    def from_payload(
        self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None
    ) -> Any:
        try:
            return super().from_payload(payload, type_hint)
        except ValidationError as err:
            problems = f"invalid {err.title}: {describe(err)}"
            sender = sender_schema(payload)
            if sender is not None and sender > self.schema_version:
                raise ApplicationError(
                    cap_error(
                        f"client schema v{sender} is newer than this worker's "
                        f"v{self.schema_version}: upgrade the workers (docs/deploy.md, "
                        f'"Rolling upgrades"); {problems}'
                    )
                    or "",
                    type=VERSION_MISMATCH_TYPE,
                    non_retryable=True,
                ) from None
            raise ApplicationError(
                cap_error(problems) or "", type=BAD_INPUT_TYPE, non_retryable=True
            ) from None


class CheckedPayloadConverter(CompositePayloadConverter):
    """Temporal's pydantic payload converter, whose JSON part stamps this code's schema version
    on what it sends and fails bad input for good."""

    schema_version = SCHEMA_VERSION

    def __init__(self) -> None:
        super().__init__(
            *(
                _CheckedJSON(self.schema_version) if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


def converter_for_schema(version: int) -> DataConverter:
    """A data converter that stamps `version`: what a client of another version sends."""

    class Versioned(CheckedPayloadConverter):
        schema_version = version

    return DataConverter(payload_converter_class=Versioned)


data_converter = DataConverter(payload_converter_class=CheckedPayloadConverter)
