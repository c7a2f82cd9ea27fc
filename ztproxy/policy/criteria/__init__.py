"""The criteria a rule can hold, one small pure predicate per module.

Each is a frozen object built once at config load (:mod:`ztproxy.policy.compile`); calling
it with the request facts returns None when it holds, or the reason it fails. Each module
registers its criteria (:mod:`~ztproxy.policy.criteria.registry`): the rule field each is
built from, and the deny page's sentence for each reason; importing this package imports them all.
"""

from __future__ import annotations

from ztproxy.policy.criteria.auth_age import MaxAuthAge
from ztproxy.policy.criteria.claims import Claims
from ztproxy.policy.criteria.clients import Clients
from ztproxy.policy.criteria.device import (
    DiskEncrypted,
    Managed,
    MaxPostureAge,
    MinOsVersion,
    MinScore,
    OwnerIsUser,
)
from ztproxy.policy.criteria.email_domains import EmailDomains
from ztproxy.policy.criteria.grant import Grant
from ztproxy.policy.criteria.groups import Groups
from ztproxy.policy.criteria.max_risk import MaxRisk
from ztproxy.policy.criteria.methods import Methods
from ztproxy.policy.criteria.mfa import Mfa
from ztproxy.policy.criteria.paths import Paths
from ztproxy.policy.criteria.public import Public
from ztproxy.policy.criteria.scopes import Scopes
from ztproxy.policy.criteria.sender_constrained import SenderConstrained
from ztproxy.policy.criteria.services import Services
from ztproxy.policy.criteria.session_age import MaxSessionAge
from ztproxy.policy.criteria.source_cidrs import SourceCidrs
from ztproxy.policy.criteria.time_window import TimeWindow
from ztproxy.policy.criteria.users import Users

__all__ = [
    "Claims",
    "Clients",
    "DiskEncrypted",
    "EmailDomains",
    "Grant",
    "Groups",
    "Managed",
    "MaxAuthAge",
    "MaxPostureAge",
    "MaxRisk",
    "MaxSessionAge",
    "Methods",
    "Mfa",
    "MinOsVersion",
    "MinScore",
    "OwnerIsUser",
    "Paths",
    "Public",
    "Scopes",
    "SenderConstrained",
    "Services",
    "SourceCidrs",
    "TimeWindow",
    "Users",
]
