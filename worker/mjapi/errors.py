"""One small error hierarchy the rest of mjqueue acts on.

Callers decide by class, never by parsing text: ``Rejected`` means "never send this again", ``RetryLater``
"the same request may succeed later", ``StopSubmitting`` "stop every submit until a human looks",
``NotSent`` "nothing reached the upstream, resend freely" and ``AnswerLost`` "it may have been accepted:
reconcile, never resend blindly".  Every error carries ``retryable``, the upstream result ``code`` and the
HTTP ``status`` (``None`` when there was none).

Constructors take the message as their only positional argument so the errors survive pickling and
Celery's JSON exception round trip (``cls(*args)``).
"""

from __future__ import annotations

import re
from typing import ClassVar, TypedDict, Unpack

__all__ = [
    "AccountUnavailable",
    "AnswerLost",
    "BannedPrompt",
    "Busy",
    "DailyLimitReached",
    "Forbidden",
    "InvalidInput",
    "MJError",
    "NotFound",
    "NotSent",
    "OutOfCredit",
    "QueueFull",
    "RateLimited",
    "Rejected",
    "RetryLater",
    "Retryable",
    "ServerError",
    "StopSubmitting",
    "TemporarilyBlocked",
    "TransportError",
    "Unauthorized",
    "Unsupported",
    "UpstreamSystemError",
    "ValidationRejected",
]


class Answer(TypedDict, total=False):
    """What the upstream said, kept with every error: result code, HTTP status, description text."""

    code: int | None
    status: int | None
    description: str | None


class MJError(Exception):
    """Base of every error of the upstream client."""

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        status: int | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.description = description

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, code={self.code!r}, status={self.status!r})"


_FIELD_MESSAGE = re.compile(r"^field '(?P<field>[^']*)': (?P<rule>.*)$", re.DOTALL)


class InvalidInput(MJError, ValueError):
    """Local validation failed; nothing was sent.  ``field`` names the input, ``rule`` says what is wrong.

    ``InvalidInput("prompt", "must not be empty")`` and ``InvalidInput("field 'prompt': must not be empty")``
    are the same error (the one-argument form is what a JSON/pickle round trip rebuilds).
    """

    def __init__(self, field_or_message: str, rule: str | None = None) -> None:
        if rule is None:
            match = _FIELD_MESSAGE.match(field_or_message)
            field, rule = (match["field"], match["rule"]) if match else ("", field_or_message)
            message = field_or_message
        else:
            field, message = field_or_message, f"field '{field_or_message}': {rule}"
        super().__init__(message)
        self.field = field
        self.rule = rule


class Rejected(MJError):
    """The upstream refused the request for good; sending it again gives the same answer."""


class ValidationRejected(Rejected):
    """Parameter/validation error answered by the upstream (HTTP 400, code 21 without a task id, code 4)."""


class BannedPrompt(Rejected):
    """The prompt contains a banned word (``banned_word`` when the upstream names it)."""

    def __init__(self, message: str = "", *, banned_word: str | None = None, **answer: Unpack[Answer]) -> None:
        super().__init__(message, **answer)
        self.banned_word = banned_word


class NotFound(Rejected):
    """The task (or endpoint) does not exist upstream."""


class Unsupported(Rejected):
    """The configured server has no such request (e.g. the Java server has no ``/mj/submit/action``);
    refused before anything is sent."""


class RetryLater(MJError):
    """Temporary: the same request may succeed later (after ``retry_after`` seconds when known)."""

    retryable: ClassVar[bool] = True

    def __init__(self, message: str = "", *, retry_after: float | None = None, **answer: Unpack[Answer]) -> None:
        super().__init__(message, **answer)
        self.retry_after = retry_after


Retryable = RetryLater  # the name the design card uses


class Busy(RetryLater):
    """The upstream has no room now (queue full, per-user concurrency/queue limit, group saturated, 429):
    not the request's fault, so retried with backoff without using up ``MJQ_SUBMIT_MAX_ATTEMPTS``."""


class QueueFull(Busy):
    """The account's queue is full; the task was not kept."""


class UpstreamSystemError(RetryLater):
    """The upstream reported a system error (vendor code 23, legacy code 9)."""


class RateLimited(Busy):
    """HTTP 429; ``retry_after`` from the Retry-After header when given."""


class ServerError(RetryLater):
    """HTTP 5xx."""


class StopSubmitting(MJError):
    """Nothing will succeed until a human acts (key, permissions, credit, account): trip the breaker."""


class Unauthorized(StopSubmitting):
    """HTTP 401: missing or wrong API key."""


class Forbidden(StopSubmitting):
    """HTTP 403."""


class OutOfCredit(StopSubmitting):
    """The account's balance is used up."""


class AccountUnavailable(StopSubmitting):
    """No usable upstream account (banned, disabled, none matching the accountFilter)."""


class DailyLimitReached(StopSubmitting):
    """The upstream's daily drawing limit is used up: submitting stops until the next UTC day."""

    resume: ClassVar[str] = "next_utc_day"


class TemporarilyBlocked(StopSubmitting):
    """HTTP 403 with an empty body (after 429s): the server blocks us for some minutes and clears itself;
    submitting stops for ``MJQ_BLOCK_COOLDOWN_S`` and resumes by itself."""

    resume: ClassVar[str] = "cooldown"


class TransportError(MJError):
    """The HTTP exchange itself failed."""

    ambiguous: ClassVar[bool] = False


class NotSent(TransportError):
    """The request never reached the upstream (connect error/timeout): safe to send again."""

    retryable: ClassVar[bool] = True


class AnswerLost(TransportError):
    """The request was (possibly) delivered but no answer was read: it may have been accepted upstream.

    Never resubmit blindly; reconcile by ``state`` or flag the job for review.
    """

    ambiguous: ClassVar[bool] = True
