"""One small error tree. The CLI maps every AzamreconError to a one-line message and exit code."""


class AzamreconError(Exception):
    """Base of every error azamrecon raises on purpose."""

    exit_code = 1


class ConfigError(AzamreconError):
    """A config value is missing or invalid; the message names the key."""

    exit_code = 2


class InputError(AzamreconError):
    """Bad input from a user (CLI argument, file, operator request)."""

    exit_code = 2


class NotFound(AzamreconError):
    """A referenced row (donation, patient, event) does not exist."""

    exit_code = 3


class StoreError(AzamreconError):
    """The database failed or is unreachable. Driver errors are translated into this at the boundary."""

    exit_code = 4


class StoreUnavailable(StoreError):
    """The database cannot be reached at all (connection refused, server gone)."""


class StoreLocked(StoreError):
    """SQLite's busy timeout ran out: another writer held the write lock for longer."""


class SchemaMissing(StoreError):
    """A table is missing: the database was never migrated (`azamrecon init`)."""


class StoreConflict(StoreError):
    """A lock conflict ended the transaction: MySQL deadlock 1213 (the server rolled it all back) or lock
    wait timeout 1205 (the server undid the statement; pipeline.db.transaction rolls back the rest).
    Nothing of it was committed, so running it again is safe."""


class CheckoutNotRecorded(StoreError):
    """AzamPay accepted a checkout but the database failed before its transactionId was recorded.

    Retrying would prompt the donor a second time: callers must not. The callback still resolves the
    donation through its reference (utilityref)."""

    def __init__(self, message: str, donation_id: int, reference: str, transaction_id: str):
        super().__init__(message)
        self.donation_id, self.reference, self.transaction_id = donation_id, reference, transaction_id


class InvariantViolation(AzamreconError):
    """A derived-state invariant failed; the transaction that found it is rolled back."""

    exit_code = 5


class ParseError(AzamreconError):
    """A callback body could not be parsed. The raw bytes are still stored."""


class LockBusy(AzamreconError):
    """Another worker holds the job's lock; this run skips."""

    exit_code = 6


class AzamPayError(AzamreconError):
    """Base of AzamPay client errors."""

    exit_code = 7


class AzamPayAuthError(AzamPayError):
    """Token generation refused (HTTP 423) or a call stayed unauthorised after one refresh."""


class AzamPayValidationError(AzamPayError):
    """AzamPay answered 400 ProblemDetails; `fields` maps field names to messages."""

    def __init__(self, message: str, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.fields = fields or {}


class AzamPayUnavailable(AzamPayError):
    """Connect/read timeout, connection error or 5xx."""


class AzamPayUnexpectedAnswer(AzamPayError):
    """AzamPay answered something we cannot interpret."""
