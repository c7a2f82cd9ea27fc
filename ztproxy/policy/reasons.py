"""The named reasons a decision gives, one per way a criterion can fail (plus two for rules).

They are stable identifiers: they go to the decision log and are turned into plain
sentences on the deny page, so renaming one is a breaking change. Each criterion registers
the sentences of the reasons it gives (:mod:`ztproxy.policy.criteria.registry`);
:data:`SENTENCES` here holds those of the reasons no one criterion gives.
"""

from __future__ import annotations

PUBLIC = "public"  # the reason of an allow by a ``public: true`` rule
AUTHENTICATION_REQUIRED = "authentication-required"
USER_NOT_ALLOWED = "user-not-allowed"
EMAIL_DOMAIN_NOT_ALLOWED = "email-domain-not-allowed"
GROUP_MISSING = "group-missing"
CLAIM_MISMATCH = "claim-mismatch"
MFA_REQUIRED = "mfa-required"
AUTH_TOO_OLD = "auth-too-old"
SESSION_TOO_OLD = "session-too-old"
DEVICE_UNKNOWN = "device-unknown"
DEVICE_UNMANAGED = "device-unmanaged"
DISK_NOT_ENCRYPTED = "disk-not-encrypted"
PLATFORM_NOT_ALLOWED = "platform-not-allowed"
OS_TOO_OLD = "os-too-old"
POSTURE_STALE = "posture-stale"
DEVICE_SCORE_TOO_LOW = "device-score-too-low"
DEVICE_OWNER_MISMATCH = "device-owner-mismatch"
DEVICE_NOT_COMPLIANT = "device-not-compliant"  # a security signal (MDM, EDR) says so
METHOD_NOT_ALLOWED = "method-not-allowed"
PATH_NOT_ALLOWED = "path-not-allowed"
SOURCE_NOT_ALLOWED = "source-not-allowed"
OUTSIDE_TIME_WINDOW = "outside-time-window"
# Services (bearer tokens, workload certificates).
SERVICE_REQUIRED = "service-required"  # a rule about services, and no service calling
TOKEN_INVALID = "token-invalid"
TOKEN_EXPIRED = "token-expired"
TOKEN_REVOKED = "token-revoked"  # its jti was revoked (admin API)
SERVICE_REVOKED = "service-revoked"  # its client_id or SPIFFE ID was revoked (admin API)
SCOPE_MISSING = "scope-missing"
CLIENT_NOT_ALLOWED = "client-not-allowed"
SERVICE_NOT_ALLOWED = "service-not-allowed"
SENDER_CONSTRAINT_FAILED = "sender-constraint-failed"
RISK_TOO_HIGH = "risk-too-high"
GRANT_REQUIRED = "grant-required"  # the rule asks for an approved access request (ztproxy.grants)
# Not from a rule: the session's risk signals (ztproxy.risk) refuse it or ask it to sign in again.
SESSION_LOCKED = "session-locked"
SESSION_AT_RISK = "session-at-risk"
NO_ALLOW_RULE = "no-allow-rule"
DENIED_BY_RULE = "denied-by-rule"
# Not from a rule: a WebSocket upgrade from a page of another site (cross-site WebSocket hijacking).
ORIGIN_NOT_ALLOWED = "origin-not-allowed"
# The reason of an allow that skipped the policy: a CORS preflight on a route that forwards them.
CORS_PREFLIGHT = "cors-preflight"

# A rule failing only for these would hold after a stronger or fresher login (step-up).
STEP_UP_REASONS = frozenset({MFA_REQUIRED, AUTH_TOO_OLD})

DENY_REASONS = (
    AUTHENTICATION_REQUIRED, USER_NOT_ALLOWED, EMAIL_DOMAIN_NOT_ALLOWED, GROUP_MISSING, CLAIM_MISMATCH,
    MFA_REQUIRED, AUTH_TOO_OLD, SESSION_TOO_OLD, DEVICE_UNKNOWN, DEVICE_UNMANAGED, DISK_NOT_ENCRYPTED,
    PLATFORM_NOT_ALLOWED, OS_TOO_OLD, POSTURE_STALE, DEVICE_SCORE_TOO_LOW, DEVICE_OWNER_MISMATCH,
    DEVICE_NOT_COMPLIANT, METHOD_NOT_ALLOWED, PATH_NOT_ALLOWED, SOURCE_NOT_ALLOWED, OUTSIDE_TIME_WINDOW, NO_ALLOW_RULE,
    DENIED_BY_RULE, ORIGIN_NOT_ALLOWED, SERVICE_REQUIRED, TOKEN_INVALID, TOKEN_EXPIRED, SCOPE_MISSING,
    CLIENT_NOT_ALLOWED, SERVICE_NOT_ALLOWED, SENDER_CONSTRAINT_FAILED, TOKEN_REVOKED, SERVICE_REVOKED,
    RISK_TOO_HIGH, SESSION_LOCKED, SESSION_AT_RISK, GRANT_REQUIRED,
)
"""Every reason a DENY or STEP_UP decision can carry."""

# The deny page's words for the reasons of no one criterion. Like every sentence they speak of
# this application and this request only: never of other routes, rules or internal addresses.
SENTENCES = {
    AUTHENTICATION_REQUIRED: "This application requires you to sign in, and sign-in is not available here.",
    NO_ALLOW_RULE: "This application has no access rule that admits anyone yet.",
    DENIED_BY_RULE: "Access to this application is blocked for this request.",
    ORIGIN_NOT_ALLOWED: "This application does not accept live connections opened by pages of another site.",
    TOKEN_INVALID: "The access token is not valid here.",
    TOKEN_EXPIRED: "The access token has expired: get a new one.",
    TOKEN_REVOKED: "The access token has been revoked: get a new one.",
    SERVICE_REVOKED: "This service's access has been revoked by an administrator.",
    SENDER_CONSTRAINT_FAILED: "The access token is bound to a key or certificate this request did not prove.",
    SESSION_LOCKED: "This session is locked for a while after suspicious activity.",
    SESSION_AT_RISK: "This session was used in a way that suggests someone else may hold it.",
}
