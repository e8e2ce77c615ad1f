"""The one error hierarchy of DMHA.

Every failure a caller can act on is one of these classes; the gRPC edge maps
each class to one status code in a single interceptor, and the SDK maps the codes
back. Anything else escaping the core is a bug and becomes INTERNAL.

    DMHAError
    ├── ConfigError                 bad configuration (startup only)
    ├── StartupError                a backend cannot be opened (names the path/URL)
    ├── InvalidArgument             bad request field        -> INVALID_ARGUMENT
    │   └── StatementSyntaxError    KB line with line/column -> INVALID_ARGUMENT
    ├── Unauthenticated             missing/expired/forged   -> UNAUTHENTICATED
    ├── PermissionDenied            role too low             -> PERMISSION_DENIED
    ├── NotFound                    absent or another user's -> NOT_FOUND
    ├── FailedPrecondition          state forbids the call   -> FAILED_PRECONDITION
    │   └── LearningError           an update could not be made (job -> failed)
    │       ├── TrainingDiverged    NaN/inf loss; the live model is untouched
    │       ├── FreezeError         tracing/verification of the frozen module failed
    │       └── ArtifactError       a version's files are missing or corrupt
    ├── ResourceExhausted           rate limit, queue full   -> RESOURCE_EXHAUSTED
    ├── DeadlineExceeded            ran past its deadline    -> DEADLINE_EXCEEDED
    ├── Cancelled                   client went away         -> CANCELLED
    └── Unavailable                 backend down, retryable  -> UNAVAILABLE
        ├── RedisUnavailable
        └── MilvusUnavailable
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "Cancelled",
    "ConfigError",
    "DMHAError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FreezeError",
    "InvalidArgument",
    "LearningError",
    "MilvusUnavailable",
    "NotFound",
    "PermissionDenied",
    "RedisUnavailable",
    "ResourceExhausted",
    "StartupError",
    "StatementSyntaxError",
    "LossSpike",
    "TrainingDiverged",
    "Unauthenticated",
    "Unavailable",
]


class DMHAError(Exception):
    """Base of every DMHA error. ``str(err)`` is safe to show to a client."""


class ConfigError(DMHAError):
    """The configuration is unreadable or invalid."""


class StartupError(DMHAError):
    """A backend cannot be opened at start-up (corrupt file, locked database, ...)."""


class InvalidArgument(DMHAError):
    """A request field is invalid.

    Args:
        field: the request field, e.g. ``"message"``.
        problem: what is wrong, naming the limit, e.g. ``"is 9000 bytes; limit 8192"``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class StatementSyntaxError(InvalidArgument):
    """A knowledge-base statement does not parse.

    Args:
        line: 1-based line number in the submitted text.
        column: 1-based column where parsing failed.
        expected: what the parser expected there.
        text: the offending line.
    """

    def __init__(self, line: int, column: int, expected: str, text: str = "") -> None:
        self.line = line
        self.column = column
        self.expected = expected
        self.text = text
        super().__init__("text", f"line {line}, column {column}: expected {expected}")


class Unauthenticated(DMHAError):
    """No valid credentials: missing, expired, or forged token, or wrong API key."""


class PermissionDenied(DMHAError):
    """Authenticated, but the caller's role may not do this."""


class NotFound(DMHAError):
    """The object does not exist, or belongs to someone else (never leak which)."""


class FailedPrecondition(DMHAError):
    """The system is not in a state that allows the call."""


class ResourceExhausted(DMHAError):
    """A quota or capacity limit was hit: rate limit, full queue, KB size."""


class DeadlineExceeded(DMHAError):
    """The request ran past its deadline."""


class Cancelled(DMHAError):
    """The client cancelled the request."""


class Unavailable(DMHAError):
    """A backend is down; retrying later may succeed."""


class RedisUnavailable(Unavailable):
    """Redis cannot be reached or failed mid-call."""


class MilvusUnavailable(Unavailable):
    """Milvus cannot be reached or failed mid-call."""


class LearningError(FailedPrecondition):
    """An update could not be made; the live model is unchanged."""


class TrainingDiverged(LearningError):
    """The loss became NaN or infinite.

    Args:
        step: 1-based step at which it happened.
        loss: the offending value.
    """

    def __init__(self, step: int, loss: float) -> None:
        self.step = step
        self.loss = loss
        super().__init__(
            f"training diverged at step {step} (loss={loss}); lower the learning rate "
            "or the loss weights; the live model is unchanged"
        )


class LossSpike(TrainingDiverged):
    """The loss jumped up between two steps by more than the repair threshold.

    Args:
        step: 1-based step at which it happened.
        loss: the loss after the jump.
        jump: how much it rose, in nats.
    """

    def __init__(self, step: int, loss: float, jump: float) -> None:
        super().__init__(step, loss)
        self.jump = jump
        self.args = (f"the loss jumped by {jump:.2f} nats at step {step} (to {loss:.3f}); the live model is unchanged",)


class FreezeError(LearningError):
    """The model could not be traced, or the frozen module disagrees with eager."""


class ArtifactError(LearningError):
    """A version's artifact is missing, unreadable or fails its checksum."""
