"""The one exception hierarchy of walletd; the HTTP layer maps it to problem+json.

    WalletdError                      500 internal_error (never shown with details)
    ├── InvalidRequest                400 invalid_request
    ├── IdempotencyKeyRequired        400 idempotency_key_required
    ├── Unauthorized                  401 unauthorized
    ├── Forbidden                     403 forbidden
    ├── NotFound                      404 not_found
    ├── IdempotencyKeyInUse           409 idempotency_key_in_use
    ├── PayloadTooLarge               413 payload_too_large
    ├── ValidationFailed              422 validation_error
    ├── BusinessRuleViolation         422 (stored and replayed by idempotency)
    │   ├── InsufficientFunds         insufficient_funds
    │   ├── CurrencyMismatch          currency_mismatch
    │   ├── SameWallet                same_wallet
    │   ├── WalletFrozen              wallet_frozen
    │   ├── WalletClosed              wallet_closed
    │   ├── LimitExceeded             limit_exceeded
    │   ├── HoldNotPending            hold_not_pending
    │   ├── RiskRejected              risk_rejected
    │   ├── AlreadyReversed           already_reversed
    │   ├── WalletNotEmpty            wallet_not_empty
    │   └── ReviewNotPending          review_not_pending
    ├── IdempotencyKeyReused          422 idempotency_key_reused
    ├── RateLimited                   429 rate_limited
    └── Unavailable                   503 unavailable
        └── TimedOut                  503 (a statement or lock wait hit its server-side bound)

Domain code raises these; no other module builds an error response.
"""

from __future__ import annotations

from typing import ClassVar


class WalletdError(Exception):
    """Base of every error walletd raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)


class InvalidRequest(WalletdError):
    status, code, title = 400, "invalid_request", "Invalid request"


class IdempotencyKeyRequired(WalletdError):
    status, code, title = 400, "idempotency_key_required", "Idempotency-Key header required"


class Unauthorized(WalletdError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(WalletdError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(WalletdError):
    status, code, title = 404, "not_found", "Not found"


class IdempotencyKeyInUse(WalletdError):
    status, code, title = 409, "idempotency_key_in_use", "Idempotency key in use"


class PayloadTooLarge(WalletdError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class ValidationFailed(WalletdError):
    status, code, title = 422, "validation_error", "Validation error"


class BusinessRuleViolation(WalletdError):
    """A request that was understood but breaks a rule of the ledger."""

    status = 422


class InsufficientFunds(BusinessRuleViolation):
    code, title = "insufficient_funds", "Insufficient funds"


class CurrencyMismatch(BusinessRuleViolation):
    code, title = "currency_mismatch", "Currency mismatch"


class SameWallet(BusinessRuleViolation):
    code, title = "same_wallet", "Same wallet"


class WalletFrozen(BusinessRuleViolation):
    code, title = "wallet_frozen", "Wallet frozen"


class WalletClosed(BusinessRuleViolation):
    code, title = "wallet_closed", "Wallet closed"


class LimitExceeded(BusinessRuleViolation):
    code, title = "limit_exceeded", "Limit exceeded"


class HoldNotPending(BusinessRuleViolation):
    code, title = "hold_not_pending", "Hold not pending"


class RiskRejected(BusinessRuleViolation):
    code, title = "risk_rejected", "Rejected by a risk rule"


class AlreadyReversed(BusinessRuleViolation):
    code, title = "already_reversed", "Already reversed"


class WalletNotEmpty(BusinessRuleViolation):
    code, title = "wallet_not_empty", "Wallet not empty"


class ReviewNotPending(BusinessRuleViolation):
    code, title = "review_not_pending", "Review not pending"


class IdempotencyKeyReused(WalletdError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"


class RateLimited(WalletdError):
    status, code, title = 429, "rate_limited", "Rate limited"

    def __init__(self, detail: str | None = None, retry_after_seconds: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(WalletdError):
    status, code, title = 503, "unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, retry_after_seconds: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class TimedOut(Unavailable):
    """One transaction ran into ``statement_timeout`` or ``lock_timeout``: not an outage.

    The group committer retries the requests of such a group one by one, so only the
    request that waits on a stuck lock or statement answers 503.
    """
