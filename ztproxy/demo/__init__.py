"""``ztproxy demo``: the whole sign-in journey on loopback, on embedded defaults.

A real OpenID Provider (:mod:`ztproxy.demo_idp`) with two users, a sample app that shows
and verifies the identity it receives (:mod:`ztproxy.demo.sample_app`), and ztproxy in
front of it with three path routes: ``/`` public, ``/app`` for employees, ``/payroll``
for the payroll group with a second factor within 10 minutes (step-up). Users, state
directory and configuration: :mod:`ztproxy.demo.scenario`; starting and stopping:
:mod:`ztproxy.demo.launcher`. ``python -m ztproxy.demo --help`` runs it too.
"""

from __future__ import annotations

from ztproxy.demo.launcher import DEFAULT_PORT, revoke_demo_user, run_demo

__all__ = ["DEFAULT_PORT", "revoke_demo_user", "run_demo"]
