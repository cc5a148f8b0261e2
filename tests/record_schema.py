"""Validate prediction records against the repository's JSON Schema (monai_ultraad/schemas/prediction.schema.json)."""

from __future__ import annotations

from typing import Any

import jsonschema

from monai_ultraad.records import prediction_schema


def check_record(record: dict[str, Any], refused: bool = False) -> dict[str, Any]:
    """Raise unless ``record`` is a valid prediction record (``refused``: a valid refusal record); return it."""
    schema = prediction_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(record)
    form = "refusal" if refused else "prediction"
    jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{form}"}).validate(record)
    return record
