"""How payloads cross Temporal: pydantic models as JSON, with bad input failing at once.

A payload that does not validate (NaN in a numeric field, a model_uri naming another host, an
invisible text...) can never validate on a retry: decoding it raises a non-retryable
ApplicationError naming the fields, so the workflow or activity that receives it fails at once
with that message, instead of failing its task over and over until the execution times out.

One kind of failure is left to retry: fields the receiver does not know (`extra_forbidden`).
That is what a client or a child newer than the workers sends during a rolling upgrade, and a
worker that knows the new fields will decode it (docs/deploy.md: deploy workers first).
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

# The error type workflows and activities already treat as final (workflows.NON_RETRYABLE).
BAD_INPUT_TYPE = "ConfigError"


def describe(err: ValidationError) -> str:
    """`field: message` for every problem, one line, without echoing the input values."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'input'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )


class _CheckedJSON(PydanticJSONPlainPayloadConverter):
    def from_payload(
        self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None
    ) -> Any:
        try:
            return super().from_payload(payload, type_hint)
        except ValidationError as err:
            if any(e["type"] == "extra_forbidden" for e in err.errors()):
                raise  # maybe a newer sender: retried until a worker that knows it takes it
            raise ApplicationError(
                cap_error(f"invalid {err.title}: {describe(err)}") or "",
                type=BAD_INPUT_TYPE,
                non_retryable=True,
            ) from None


class CheckedPayloadConverter(CompositePayloadConverter):
    """Temporal's pydantic payload converter, whose JSON part fails bad input for good."""

    def __init__(self) -> None:
        super().__init__(
            *(
                _CheckedJSON() if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


data_converter = DataConverter(payload_converter_class=CheckedPayloadConverter)
