"""What a sandbox is started with. Mutable at runtime through the control endpoints and SandboxHandle."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_CLIENT_SECRET = "sandbox-secret"
DEFAULT_API_KEY = "sandbox-api-key"


@dataclass
class SandboxSettings:
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    api_key: str = DEFAULT_API_KEY
    app_name: str | None = None  # None: any appName is accepted
    callback_url: str | None = None  # None: no callback is ever sent
    webhook_password: str | None = None  # sent in the callback's "password" field when set
    outcomes: dict[str, str] = field(default_factory=dict)  # msisdn (any accepted form) -> outcome
    default_outcome: str = "success"
    latency: float = 0.0  # seconds added before every AzamPay answer (not control endpoints)
    status_latency: float = 0.0  # seconds added before transaction-status answers only (a slow status API)
    token_ttl_seconds: int = 3600
    delay_seconds: float = 2.0  # the `delayed` outcome's callback delay
    duplicate_gap_seconds: float = 0.05  # between the two identical callbacks of `duplicate`
    out_of_order_gap_seconds: float = 0.2  # between the failure and the success callback of `out_of_order`
    callback_workers: int = 8
    callback_timeout: tuple[float, float] = (2.0, 5.0)  # connect, read
    status_path: str = "/azampay/gettransactionstatus"
    reference_param: str = "pgReferenceId"
    provider_param: str = "bankName"
