"""The sandbox's result type: every request gets exactly one of these (docs/architecture.md, Sandbox)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ExecStatus = Literal["ok", "error", "timeout", "memory", "output_limit", "killed", "infra_error"]
EXEC_STATUSES: tuple[str, ...] = (
    "ok", "error", "timeout", "memory", "output_limit", "killed", "infra_error",
)


@dataclass
class ExecRequest:
    code: str
    stdin: str = ""
    timeout_s: float | None = None
    session_id: str | None = None
    queue_timeout_s: float | None = None  # most seconds to wait for a slot; None: the backend's default


@dataclass
class ExecResult:
    """Outcome of one execution.

    ``error``: the user's code raised or exited non-zero. ``infra_error``: the service failed
    (never the model's fault; trainers must not blame the policy for it) and ``reason`` says
    why (e.g. ``queue_full``, ``zygote_died``, ``queue_timeout``, ``worker_lost``).
    ``session_reset`` is True when a session's state was lost by this call.
    """

    status: ExecStatus
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    exec_ms: float = 0.0
    queue_ms: float = 0.0
    truncated: bool = False
    session_id: str | None = None
    session_reset: bool = False
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecResult:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
