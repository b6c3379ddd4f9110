"""`crosspaths acl apply`: make the cluster's ACLs for the declared principals those of streams/principals.py.

Idempotent: ACLs the table declares and the cluster lacks are created; ACLs the cluster holds for
one of the table's principals and the table does not declare are deleted (a grant removed from the
table is revoked on the next apply). ACLs of other principals are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from streams.clients import admin_client
from streams.principals import Grant, acl_entries, principal_table
from streams.settings import Settings


@dataclass(frozen=True)
class AclChange:
    """What one apply did: ACLs created, deleted, and how many were already right."""

    created: tuple[tuple[str, Grant], ...]
    deleted: tuple[tuple[str, Grant], ...]
    unchanged: int

    def lines(self) -> list[str]:
        """One line per change, then a summary."""
        out = [f"created  {user:<24} {_describe(g)}" for user, g in self.created]
        out += [f"deleted  {user:<24} {_describe(g)}" for user, g in self.deleted]
        out.append(f"{len(self.created)} created, {len(self.deleted)} deleted, {self.unchanged} unchanged")
        return out


def plan_acls(wanted: set[tuple[str, Grant]], held: set[tuple[str, Grant]]) -> AclChange:
    """What to create and delete so that the principals of `wanted` hold exactly its ACLs."""
    users = {user for user, _ in wanted}
    stale = {(u, g) for u, g in held if u in users} - wanted
    return AclChange(created=tuple(sorted(wanted - held)), deleted=tuple(sorted(stale)),
                     unchanged=len(wanted & held))


def apply_acls(settings: Settings) -> AclChange:
    """Bring the cluster's ACLs for the declared principals to the table (needs the admin's credentials)."""
    wanted = acl_entries(principal_table(settings))
    admin = admin_client(settings, client_id="crosspaths-acl")
    try:
        held = held_acls(admin, {user for user, _ in wanted})
        change = plan_acls(wanted, held)
        if change.created:
            result = admin.create_acls([_to_kafka(user, g) for user, g in change.created])
            if result.get("failed"):
                raise RuntimeError(f"the cluster refused ACLs: {result['failed']}")
        if change.deleted:
            filters = [_filter_of(_to_kafka(user, g)) for user, g in change.deleted]
            for _, _, error in admin.delete_acls(filters):
                if error is not None and getattr(error, "errno", 0):
                    raise RuntimeError(f"the cluster refused to delete ACLs: {error}")
        return change
    finally:
        admin.close()


def held_acls(admin, users: set[str]) -> set[tuple[str, Grant]]:
    """The ALLOW ACLs the cluster holds for `users`, as (principal, Grant); other kinds are left out."""
    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             ResourcePatternFilter, ResourceType)

    found = set()
    for user in sorted(users):
        acls, error = admin.describe_acls(ACLFilter(
            principal=user, host=None, operation=ACLOperation.ANY, permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)))
        if error is not None and getattr(error, "errno", 0):
            raise RuntimeError(f"describing the ACLs of {user} failed: {error}")
        for acl in acls:
            grant = _from_kafka(acl)
            if grant is not None:
                found.add((acl.principal, grant))
    return found


def _to_kafka(user: str, grant: Grant):
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    return ACL(principal=user, host="*", operation=ACLOperation[grant.operation.upper()],
               permission_type=ACLPermissionType.ALLOW,
               resource_pattern=ResourcePattern(ResourceType[grant.resource.upper()], grant.name,
                                                ACLResourcePatternType[grant.pattern.upper()]))


def _filter_of(acl):
    """The ACLFilter matching exactly `acl`."""
    from kafka.admin import ACLFilter, ResourcePatternFilter

    pattern = acl.resource_pattern
    return ACLFilter(principal=acl.principal, host=acl.host, operation=acl.operation,
                     permission_type=acl.permission_type,
                     resource_pattern=ResourcePatternFilter(pattern.resource_type, pattern.resource_name,
                                                            pattern.pattern_type))


def _from_kafka(acl) -> Grant | None:
    """The Grant of an ALLOW ACL for any host; None for one the table cannot express (DENY, one host...)."""
    from kafka.admin import ACLPermissionType

    if acl.permission_type != ACLPermissionType.ALLOW or acl.host != "*":
        return None
    try:
        return Grant(acl.resource_pattern.resource_type.name.lower(), acl.resource_pattern.resource_name,
                     acl.operation.name.lower(), acl.resource_pattern.pattern_type.name.lower())
    except ValueError:
        return None


def _describe(g: Grant) -> str:
    return f"{g.operation:<17} {g.resource} {g.name}{'*' if g.pattern == 'prefixed' else ''}"
