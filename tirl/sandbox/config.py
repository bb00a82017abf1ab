"""Configuration of the code-execution sandbox (section ``[sandbox]``)."""

from pydantic import Field

from tirl.schema import Section


class SandboxConfig(Section):
    url: str | None = Field(
        None,
        description="Base URL of a running `tirl sandbox serve`; unset = an in-process pool "
        "(the embedded default).",
    )
    slots: int = Field(0, ge=0, le=4096, description="Concurrent executions; 0 = from the CPU count.")
    queue_size: int = Field(8192, ge=1, description="Requests waiting for a slot before backpressure.")
    timeout_s: float = Field(10.0, gt=0, le=3600, description="Wall-clock limit per call.")
    cpu_time_s: float = Field(0.0, ge=0, description="CPU-time limit per call; 0 = same as timeout_s.")
    memory_mb: int = Field(1024, ge=32, description="Address-space limit per call (MiB).")
    max_output_bytes: int = Field(65536, ge=1024, description="stdout+stderr cap per call.")
    preload: list[str] = Field(
        default_factory=lambda: ["math", "fractions", "itertools", "functools", "collections",
                                 "numpy", "sympy"],
        description="Modules the zygote imports once so that each call starts warm.",
    )
    session_ttl_s: float = Field(600.0, gt=0, description="Idle time after which a session ends.")
    max_sessions: int = Field(256, ge=1, description="Cap on live stateful sessions.")
