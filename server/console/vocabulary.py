"""Words the console shows straight from data: statuses, roles, kinds.

Templates translate such values as they come (`_(case.status)`, `_(user.role)`),
which message extraction cannot see. This module names every one, each with
a `dynamic:` comment saying where it comes from, so that `pybabel extract -c
dynamic:` puts them in the catalog and `pybabel update` keeps them.
tests/server/test_console_i18n.py checks these lists against their sources
(the status machines, the roles, the record types...): a new value fails
there until it is named here and translated.
"""

from __future__ import annotations


def _(message: str) -> str:
    """Marks a message for translation; pages translate it when they show it."""
    return message


CASE_STATUSES = (
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("new"),
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("assigned"),
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("in_mediation"),
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("resolved"),
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("closed"),
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("referred"),
    # dynamic: case status (schemas.records.CASE_STATUS)
    _("withdrawn"),
)

WARNING_STATUSES = (
    # dynamic: warning status (schemas.records.WARNING_STATUS)
    _("open"),
    # dynamic: warning status (schemas.records.WARNING_STATUS)
    _("triaged"),
    # dynamic: warning status (schemas.records.WARNING_STATUS)
    _("converted"),
    # dynamic: warning status (schemas.records.WARNING_STATUS)
    _("dismissed"),
)

AGREEMENT_STATUSES = (
    # dynamic: agreement status (schemas.records.AGREEMENT_STATUS)
    _("draft"),
    # dynamic: agreement status (schemas.records.AGREEMENT_STATUS)
    _("collecting"),
    # dynamic: agreement status (schemas.records.AGREEMENT_STATUS)
    _("executed"),
    # dynamic: agreement status (schemas.records.AGREEMENT_STATUS)
    _("superseded"),
    # dynamic: agreement status (schemas.records.AGREEMENT_STATUS)
    _("void"),
)

ROLES = (
    # dynamic: user role (server.storage.directory.ROLES)
    _("mediator"),
    # dynamic: user role (server.storage.directory.ROLES)
    _("informant"),
    # dynamic: user role (server.storage.directory.ROLES)
    _("supervisor"),
    # dynamic: user role (server.storage.directory.ROLES)
    _("admin"),
)

PARTY_ROLES = (
    # dynamic: party role (schemas.records.Party.role)
    _("petitioner"),
    # dynamic: party role (schemas.records.Party.role)
    _("respondent"),
    # dynamic: party role (schemas.records.Party.role)
    _("third_party"),
)

MATCHED_BY = (
    # dynamic: what a repeat petition matched on (server.storage.people)
    _("name"),
    # dynamic: what a repeat petition matched on (server.storage.people)
    _("phone"),
    # dynamic: what a repeat petition matched on (server.storage.people)
    _("id_number"),
)

SEVERITIES = (
    # dynamic: warning severity (schemas.records.EarlyWarning.severity)
    _("low"),
    # dynamic: warning severity (schemas.records.EarlyWarning.severity)
    _("medium"),
    # dynamic: warning severity (schemas.records.EarlyWarning.severity)
    _("high"),
    # dynamic: warning severity (schemas.records.EarlyWarning.severity)
    _("critical"),
)

RECORD_TYPES = (
    # dynamic: record type (schemas.records.RECORD_TYPES)
    _("case"),
    # dynamic: record type (schemas.records.RECORD_TYPES)
    _("warning"),
    # dynamic: record type (schemas.records.RECORD_TYPES)
    _("agreement"),
    # dynamic: record type (schemas.records.RECORD_TYPES)
    _("party"),
)

CODE_STATES = (
    # dynamic: enrolment code state (server.console.admin)
    _("unused"),
    # dynamic: enrolment code state (server.console.admin)
    _("used"),
    # dynamic: enrolment code state (server.console.admin)
    _("expired"),
)

CHANGE_OUTCOMES = (
    # dynamic: outcome of a re-applied change (schemas.changes.ChangeResult.status)
    _("applied"),
    # dynamic: outcome of a re-applied change (schemas.changes.ChangeResult.status)
    _("duplicate"),
    # dynamic: outcome of a re-applied change (schemas.changes.ChangeResult.status)
    _("conflict"),
    # dynamic: outcome of a re-applied change (schemas.changes.ChangeResult.status)
    _("rejected"),
)
