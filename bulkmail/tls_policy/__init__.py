"""Authenticated TLS for direct delivery: MTA-STS (RFC 8461), DANE (RFC 7672),
TLS reporting (RFC 8460).

The policy modules (:mod:`.mta_sts`, :mod:`.dane`, :mod:`.tlsrpt`,
:mod:`.cache`) need no I/O layer; :mod:`.planner` decides a rule per MX
host (:mod:`.rules`) and :mod:`.router` attaches the plans to routed
destinations, which the delivery layer's connector applies per connection.
Only the settings are imported here, so a relay-only run never loads the rest.
"""

from __future__ import annotations

from .settings import POLICY_NAMES, FetchConfig, PolicyName, TLSPolicyConfig

__all__ = ["POLICY_NAMES", "FetchConfig", "PolicyName", "TLSPolicyConfig"]
