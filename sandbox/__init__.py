"""A local AzamPay simulator: a real HTTP server for token, checkout, payment partners and status, which sends
callbacks in the live payload shape with scriptable fault injection (see sandbox/outcomes.py).

Use `sandbox.testing.running_sandbox(...)` in tests and scripts, `azamrecon sandbox` from a shell.
"""

from sandbox.outcomes import OUTCOMES
from sandbox.settings import SandboxSettings

__all__ = ["OUTCOMES", "SandboxSettings"]
