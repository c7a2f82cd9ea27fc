"""The ``workload_identity`` section: the SPIFFE trust domains whose X.509 SVIDs identify services.

Each trust domain names the PEM file of its trust bundle (the CA certificates that issue its
SVIDs). The listener asks for a client certificate and verifies it against the device CA
and every bundle; see :mod:`ztproxy.workloads`. This module imports no aiohttp.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ztproxy.config.values import Model
from ztproxy.workloads.ids import trust_domain_problem


class TrustDomainConfig(Model):
    bundle_file: str = Field(min_length=1)


class WorkloadIdentityConfig(Model):
    trust_domains: dict[str, TrustDomainConfig] = Field(min_length=1)

    @field_validator("trust_domains")
    @classmethod
    def _check_trust_domains(cls, value: dict[str, TrustDomainConfig]) -> dict[str, TrustDomainConfig]:
        problems = [problem for name in value if (problem := trust_domain_problem(name)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return value
