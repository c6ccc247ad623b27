"""Authenticated TLS for direct delivery: MTA-STS (RFC 8461), DANE (RFC 7672),
TLS reporting (RFC 8460).

The policy modules (:mod:`.mta_sts`, :mod:`.dane`, :mod:`.tlsrpt`,
:mod:`.cache`) need no I/O layer; :mod:`.planner` decides a rule per MX
host and :mod:`.router` attaches the plans to routed destinations, which
the delivery layer's connector applies per connection.
"""

from __future__ import annotations

from .mta_sts import FetchConfig
from .planner import (
    POLICY_NAMES,
    PolicyDestination,
    PolicyName,
    TLSPlan,
    TLSPolicies,
    TLSPolicyConfig,
)
from .router import PolicyRouter

__all__ = [
    "POLICY_NAMES", "FetchConfig", "PolicyDestination", "PolicyName", "PolicyRouter", "TLSPlan",
    "TLSPolicies", "TLSPolicyConfig",
]
