"""Configuration of the code-execution sandbox (section ``[sandbox]``)."""

from pydantic import Field

from tirl.schema import Section


class SandboxConfig(Section):
    url: str | None = Field(
        None,
        description="Base URL of a running `tirl sandbox serve`; unset = an in-process pool "
        "(the embedded default).",
    )
    host: str = Field("127.0.0.1", description="`tirl sandbox serve`: address to listen on (loopback by default).")
    port: int = Field(8900, ge=0, le=65535, description="`tirl sandbox serve`: port to listen on.")
    redis_url: str | None = Field(
        None,
        description="redis://HOST:PORT/DB of a sandbox fleet: `tirl sandbox serve` becomes its "
        "gateway and `tirl sandbox worker` takes work from it.",
    )
    queue_timeout_s: float = Field(
        60.0, gt=0, le=86400,
        description="How long a call may wait for a free slot when the caller gives no budget "
        "(seconds; then infra_error/queue_timeout).",
    )
    call_budget_s: float = Field(
        600.0, gt=0, le=86400,
        description="Training/eval tools: seconds a call may wait for a slot over all its attempts; "
        "queue_timeout and worker_lost are retried within it (a burst drains, nothing is dropped).",
    )
    retry_attempts: int = Field(4, ge=1, le=100, description="Attempts per call at most within call_budget_s.")
    header_timeout_s: float = Field(
        30.0, gt=0, description="`tirl sandbox serve`: a client must send its request headers within this (s)."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="`tirl sandbox serve`: a client must send its request body within this (s)."
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
    max_code_bytes: int = Field(262144, ge=1024, description="Largest accepted `code` (bytes, UTF-8).")
    max_stdin_bytes: int = Field(1048576, ge=0, description="Largest accepted `stdin` (bytes, UTF-8).")
    max_timeout_s: float = Field(300.0, gt=0, description="Largest `timeout_s` a request may ask for.")
    max_batch: int = Field(4096, ge=1, description="Most requests in one /v1/execute/batch call.")
    nproc: int = Field(32, ge=1, description="Processes (incl. threads) one call may run at once.")
    nofile: int = Field(256, ge=16, description="Open files per process of a call.")
    file_size_mb: int = Field(64, ge=1, description="Largest file a call may write (MiB).")
    session_memory_mb: int = Field(0, ge=0, description="Address-space limit of a session worker; 0 = memory_mb.")
    uid_base: int = Field(2_000_000, ge=1000, description="First of the unprivileged uids given to calls: each zygote "
                          "locks a free block of 8192 from here (one uid per live call).")
    light_zygote: bool = Field(True, description="Also run a stdlib-only zygote for code that imports nothing else (forks ~5x cheaper).")
