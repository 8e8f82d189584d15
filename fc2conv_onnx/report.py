"""What a conversion did, for people (`to_text`) and for scripts (`to_json`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .errors import printable
from .model.geometry import Geometry, HeadGeometry
from .plan.plan import Plan
from .prove.validate import OutputCheck


@dataclass
class Report:
    plan: Plan
    #: One per head of the plan, in order.
    geometry: Tuple[HeadGeometry, ...] = ()
    #: Validation figures; empty when validation was off (see `validated`).
    checks: Tuple[OutputCheck, ...] = ()
    validated: bool = False
    source: Optional[str] = None
    output: Optional[str] = None
    #: The file holding the written model's weights, when they were written as external data.
    external_data: Optional[str] = None
    #: The converted model that `validate` compared with the original.
    compared_with: Optional[str] = None
    #: True for a dry run (`inspect`): nothing was converted.
    dry_run: bool = False
    #: What `--emit-detections` appended, in one line; '' when nothing was.
    detector: str = ""

    def to_text(self) -> str:
        before, after = [], []
        if self.source:
            before.append(f"model: {self.source}")
        if self.compared_with:
            before.append(f"converted model: {self.compared_with}")
        for head, where in zip(self.plan.heads, self.geometry):
            after.append(f"geometry of {', '.join(head.outputs)}: {where.describe()}")
            if isinstance(where, Geometry) and not where.local:
                after.append(f"{', '.join(head.outputs)}: {where.locality()}")
        if self.detector:
            after.append(self.detector)
        if self.plan.trunk_inputs and self.plan.heads:
            after.append("inputs with symbolic batch and spatial dims: " + ", ".join(self.plan.trunk_inputs))
        if self.validated:
            after.append("validation (onnxruntime):")
            after += [f"  {check.describe()}" for check in self.checks]
            if self.plan.trunk_inputs and not any(check.check == "windows" for check in self.checks):
                after.append("  window check: off (--validate-size off); larger inputs are unproven")
        elif not self.dry_run:
            after.append("validation: skipped (--no-validate); the converted model is unproven")
        if self.output:
            after.append(f"written: {self.output}" + (f" (weights in {self.external_data})"
                                                      if self.external_data else ""))
        # Each line escaped on its own, so that a name holding a newline cannot forge a line; the plan
        # escapes its own lines.
        heads_are = "checked against the converted model" if self.compared_with else "to convert"
        return "\n".join([*map(printable, before), self.plan.describe(heads_are), *map(printable, after)])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "external_data": self.external_data,
            "dry_run": self.dry_run,
            "compared_with": self.compared_with,
            **self.plan.to_dict(),
            "geometry": [where.to_dict() for where in self.geometry],
            "validated": self.validated,
            "checks": [check.to_dict() for check in self.checks],
            "detector": self.detector,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)
