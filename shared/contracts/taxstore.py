"""The simulated tax store's drill knobs (PUT /admin/faults): the store applies them, and the issuer's
dashboard (PUT /ops/api/faults) checks and documents the same model before it forwards a change."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["FaultsUpdate", "JsonInt"]


def _whole_number(value: Any) -> Any:
    """JSON has one number type: 30000.0 is the integer 30000 (JSON Schema says so too); 1.5 is not one."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_whole_number)]


class FaultsUpdate(BaseModel):
    """Any subset of the knobs; the rest keep their values."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "1" is not 1, nor true 1.0
    latency_ms: JsonInt = Field(default=0, ge=0, le=600_000)
    latency_jitter_ms: JsonInt = Field(default=0, ge=0, le=600_000)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)
    visibility_delay_ms: JsonInt = Field(default=0, ge=0, le=86_400_000)
    corrupt_rate: float = Field(default=0.0, ge=0, le=1)
    outage: bool = False
    seed: JsonInt | None = Field(default=None,
                                 description="re-seeds the generator when present; null = not reproducible")
    timeout_hang_ms: JsonInt = Field(default=30_000, ge=0, le=600_000)
