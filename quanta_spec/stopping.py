"""The `until` option of a study: run each layer until its final λ_s is known well enough.

The paper's 30 runs per layer are a fixed guess; many layers are settled after a few.
With `until`, a study starts `min_runs` runs of every layer and adds runs to a layer one
at a time as its runs end, until the 95% confidence interval of that layer's mean final
λ_s is at most `ci_halfwidth` on each side, or `max_runs` runs were started. Run r is
still seeded with seed + r, so a stopped study is a prefix of the fixed study of
`max_runs` runs. The decision itself is the job core's (`quanta_jobs.adaptive_runs`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

#: Why a layer of a study with `until` got no more runs.
StopReason = Literal["ci_reached", "max_runs", "failed_runs"]


class UntilRule(BaseModel):
    """When a layer of a study has had enough runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ci_halfwidth: float = Field(
        gt=0, le=1,
        description="Target half-width of the 95% confidence interval (Student's t) of a "
        "layer's mean final λ_s; a layer stops once its ended runs reach it.")
    max_runs: PositiveInt = Field(
        default=30, description="Most runs of one layer (the paper's fixed number: 30).")
    min_runs: int = Field(
        default=3, ge=2,
        description="Runs every layer starts with, and the fewest a layer stops after (an "
        "interval needs two runs at least). Also how many runs of a layer run at once.")

    @model_validator(mode="after")
    def _ordered(self) -> UntilRule:
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be at least min_runs "
                             f"({self.min_runs})")
        return self
