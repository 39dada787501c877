"""Provisioned users and groups in the broker's store, for one provisioning client (scim2-server's storage).

scim2-server validates requests and applies PUT and PATCH to the resource this storage returns; the storage
reads and writes the rows (``broker.store``), keeps ``groups`` and ``members`` in one membership table, and
enforces what the client may do: a client sees and changes only the people and groups of its own identity
store, a users-only client touches no group, and a client with ``allowed_groups`` manages only those.

Every change appends its audit event in the same transaction as the change (both commit, or neither), and
records a :class:`Change` that the service acts on once it has committed (revocation, ended sessions).
Passwords are never stored: the broker does not authenticate provisioned people itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from scim2_models import (
    ForbiddenException,
    Group,
    InvalidValueException,
    NotFoundException,
    NotImplementedException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimFilter,
    SearchRequest,
    UniquenessException,
)
from scim2_models.path import CompareOperator, Comparison
from scim2_server.storage import ScimStorage, SearchPage
from scim2_server.utils import parametrize

from broker.audit import AuditTrail
from broker.context import Context
from broker.scim.directory import fold, principals_of
from broker.scim.resources import GROUP, USER
from broker.settings import ScimClientConfig
from broker.store import queries
from broker.store.db import Database, Session
from broker.store.models import ScimGroup, ScimUser

# Attributes never kept in a stored document: server-assigned (id, meta), derived from memberships (groups,
# members), or secret (password: RFC 7643 section 4.1.1 makes it write-only; the broker has no use for it).
_NOT_STORED = {"id": None, "meta": None, "groups": None, "members": None, "password": None}
# Filters on these attributes with ``eq`` are narrowed in SQL before the filter itself is evaluated.
_INDEXED = {"username", "externalid", "displayname", "id"}


class Refused(ForbiddenException):
    """A 403 with the broker's own audit reason (e.g. ``scim.group_not_allowed``)."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail=detail)
        self.reason = reason


@dataclass(frozen=True)
class Change:
    """A committed change that means something for access: a person deactivated or deleted."""

    kind: str
    user_name: str
    principal_ids: list[int] = field(default_factory=list)


class ProvisioningStorage(ScimStorage):
    """One request's storage: the client it acts for, one transaction per operation."""

    def __init__(
        self,
        *,
        db: Database,
        client: ScimClientConfig,
        models: dict[str, type[Resource[Any]]],
        audit: AuditTrail,
        ctx: Context,
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.client = client
        self.store = client.store
        self.models = models
        self.audit = audit
        self.ctx = ctx
        self.clock = clock
        self.changes: list[Change] = []
        self._session: Session | None = None

    @contextmanager
    def operation(self) -> Iterator[None]:
        """One SCIM operation, one transaction: the change and its audit event commit together."""
        with self.db.transaction() as session:
            self._session = session
            try:
                yield
            finally:
                self._session = None

    @property
    def session(self) -> Session:
        assert self._session is not None, "storage used outside operation()"
        return self._session

    # ------------------------------------------------------------ reading

    def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        # Locked: a read inside a PUT, PATCH or DELETE is followed by the write, and two IdP requests on one
        # group (membership PATCHes arrive in bursts) must not both start from the same members.
        if resource_type.name == USER:
            user = queries.get_scim_user(self.session, store=self.store, user_id=resource_id, lock=True)
            if user is not None:
                return self._users([user])[0]
        else:
            group = queries.get_scim_group(self.session, store=self.store, group_id=resource_id, lock=True)
            if group is not None:
                return self._groups([group])[0]
        raise NotFoundException(detail=f"{resource_type.name} {resource_id!r} not found")

    def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="Search /Users or /Groups; a search at the root is not supported")
        resource_type = resource_types[0]
        start = search_request.start_index_0 or 0
        count = search_request.count
        model = ScimUser if resource_type.name == USER else ScimGroup
        scim_filter = search_request.filter
        if scim_filter is None:
            total = queries.count_scim_rows(self.session, model=model, store=self.store)
            limit = count if count is not None else total
            rows = queries.page_scim_rows(self.session, model=model, store=self.store, offset=start, limit=limit)
            return SearchPage(total, self._resources(resource_type, list(rows)))
        if not scim_filter.models:
            scim_filter = parametrize(ScimFilter, self.models[str(resource_type.name)])(str(scim_filter))
        candidates = self._resources(resource_type, self._candidates(resource_type, scim_filter))
        found = [r for r in candidates if scim_filter.match(r)]
        stop = None if count is None else start + count
        return SearchPage(len(found), found[start:stop])

    def _candidates(self, resource_type: ResourceType, scim_filter: ScimFilter[Any]) -> list[ScimUser | ScimGroup]:
        """The rows a filter can match: narrowed in SQL for ``attr eq "value"`` on an indexed attribute."""
        node = scim_filter.ast
        name = ""
        value = ""
        if isinstance(node, Comparison) and node.op == CompareOperator.eq and isinstance(node.value, str):
            name = str(node.attr_path).rsplit(":", 1)[-1].casefold()
            value = node.value
        session, store = self.session, self.store
        if resource_type.name == USER:
            if name == "username":
                return list(queries.find_scim_users(session, store=store, user_name_key=fold(value)))
            if name == "externalid":
                return list(queries.find_scim_users(session, store=store, external_id=value))
            if name == "id":
                return list(queries.find_scim_users(session, store=store, ids=[value]))
            return list(queries.find_scim_users(session, store=store))
        if name == "displayname":
            return list(queries.find_scim_groups(session, store=store, display_name_key=fold(value)))
        if name == "externalid":
            return list(queries.find_scim_groups(session, store=store, external_id=value))
        if name == "id":
            return list(queries.find_scim_groups(session, store=store, ids=[value]))
        return list(queries.find_scim_groups(session, store=store))

    def _resources(self, resource_type: ResourceType, rows: list[Any]) -> list[Resource[Any]]:
        return self._users(rows) if resource_type.name == USER else self._groups(rows)

    def _users(self, rows: list[ScimUser]) -> list[Resource[Any]]:
        groups = queries.scim_groups_of(self.session, user_ids=[r.id for r in rows]) if rows else {}
        resources = []
        for row in rows:
            document = dict(row.document)
            memberships = [{"value": g.id, "display": g.display_name, "$ref": f"Groups/{g.id}"} for g in groups[row.id]]
            if memberships:
                document["groups"] = memberships
            resources.append(self._resource(USER, row, document))
        return resources

    def _groups(self, rows: list[ScimGroup]) -> list[Resource[Any]]:
        members = queries.scim_members(self.session, group_ids=[r.id for r in rows]) if rows else {}
        resources = []
        for row in rows:
            document = dict(row.document)
            people = [
                {"value": u.id, "display": display or u.user_name, "type": "User", "$ref": f"Users/{u.id}"}
                for u, display in members[row.id]
            ]
            if people:
                document["members"] = people
            resources.append(self._resource(GROUP, row, document))
        return resources

    def _resource(self, kind: str, row: ScimUser | ScimGroup, document: dict[str, Any]) -> Resource[Any]:
        document["id"] = row.id
        document["meta"] = {
            "resourceType": kind,
            "created": row.created_at.isoformat(),
            "lastModified": row.updated_at.isoformat(),
            "version": _etag(row.version),
        }
        return self.models[kind].model_validate(document)

    # ------------------------------------------------------------ writing

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        now = self.clock()
        if resource_type.name == USER:
            values = self._user_values(resource, now)
            user = queries.add_scim_row(self.session, model=ScimUser, **self._new_row(now), **values)
            if not isinstance(user, ScimUser):
                raise UniquenessException(detail=f"userName {values['user_name']!r} is already provisioned")
            self._record("user_created", user.id, {"userName": user.user_name, "active": user.active})
            return self._users([user])[0]
        values = self._group_values(resource, now)
        members = self._members(resource)
        group = queries.add_scim_row(self.session, model=ScimGroup, **self._new_row(now), **values)
        if not isinstance(group, ScimGroup):
            raise UniquenessException(detail=f"displayName {values['display_name']!r} is already provisioned")
        queries.set_scim_members(self.session, group_id=group.id, members=members)
        added = self._user_names(sorted(members))
        self._record("group_created", group.id, {"displayName": group.display_name, "added": added})
        return self._groups([group])[0]

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        now = self.clock()
        resource_id = cast(str, resource.id)
        if resource_type.name == USER:
            user = queries.get_scim_user(self.session, store=self.store, user_id=resource_id, lock=True)
            if user is None:
                raise NotFoundException(detail=f"User {resource_id!r} not found")
            _check_version(user, expected_version)
            was_active, old_name = user.active, user.user_name
            values = self._user_values(resource, now)
            if not queries.save_scim_row(self.session, row=user, **values):
                raise UniquenessException(detail=f"userName {values['user_name']!r} is already provisioned")
            reason = "user_updated"
            if was_active and not user.active:
                reason = "user_deactivated"
                self.changes.append(Change("deactivated", user.user_name, self._principal_ids(user)))
            elif user.active and not was_active:
                reason = "user_reactivated"
            changed: dict[str, Any] = {"userName": user.user_name, "active": user.active}
            if old_name != user.user_name:
                changed["previous_userName"] = old_name
            self._record(reason, user.id, changed)
            return self._users([user])[0]
        group = queries.get_scim_group(self.session, store=self.store, group_id=resource_id, lock=True)
        if group is None:
            raise NotFoundException(detail=f"Group {resource_id!r} not found")
        _check_version(group, expected_version)
        self._check_group_allowed(group.display_name)
        old_members = {u.id for u, _ in queries.scim_members(self.session, group_ids=[group.id])[group.id]}
        old_name = group.display_name
        # Members first: their lookup flushes the session, which must not yet hold the new displayName.
        members = self._members(resource)
        values = self._group_values(resource, now)
        if not queries.save_scim_row(self.session, row=group, **values):
            raise UniquenessException(detail=f"displayName {values['display_name']!r} is already provisioned")
        queries.set_scim_members(self.session, group_id=group.id, members=members)
        added, removed = set(members) - old_members, old_members - set(members)
        detail: dict[str, Any] = {
            "displayName": group.display_name,
            "added": self._user_names(sorted(added)),
            "removed": self._user_names(sorted(removed)),
        }
        if old_name != group.display_name:
            detail["previous_displayName"] = old_name
        self._record("group_updated", group.id, detail)
        return self._groups([group])[0]

    def delete(self, resource_type: ResourceType, resource_id: str, *, expected_version: str | None = None) -> None:
        if resource_type.name == USER:
            user = queries.get_scim_user(self.session, store=self.store, user_id=resource_id, lock=True)
            if user is None:
                raise NotFoundException(detail=f"User {resource_id!r} not found")
            _check_version(user, expected_version)
            self.changes.append(Change("deleted", user.user_name, self._principal_ids(user)))
            queries.delete_scim_row(self.session, row=user)
            self._record("user_deleted", resource_id, {"userName": user.user_name})
            return
        group = queries.get_scim_group(self.session, store=self.store, group_id=resource_id, lock=True)
        if group is None:
            raise NotFoundException(detail=f"Group {resource_id!r} not found")
        _check_version(group, expected_version)
        self._check_group_allowed(group.display_name)
        members = [u.user_name for u, _ in queries.scim_members(self.session, group_ids=[group.id])[group.id]]
        queries.delete_scim_row(self.session, row=group)
        self._record("group_deleted", resource_id, {"displayName": group.display_name, "removed": members})

    # ------------------------------------------------------------ helpers

    def _new_row(self, now: datetime) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "client": self.client.name,
            "store": self.store,
            "created_at": now,
            "version": 1,
        }

    def _user_values(self, resource: Resource[Any], now: datetime) -> dict[str, Any]:
        document = _document(resource)
        user_name = str(document["userName"])
        return {
            "user_name": user_name,
            "user_name_key": fold(user_name),
            "external_id": document.get("externalId"),
            "email_key": _primary_email(document),
            # RFC 7643 section 4.1.1: "active" is optional; a person the client does not say is inactive is active.
            "active": document.get("active") is not False,
            "document": document,
            "updated_at": now,
        }

    def _group_values(self, resource: Resource[Any], now: datetime) -> dict[str, Any]:
        document = _document(resource)
        name = document.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueException(detail="A group needs a displayName")
        self._check_group_allowed(name)
        return {
            "display_name": name,
            "display_name_key": fold(name),
            "external_id": document.get("externalId"),
            "document": document,
            "updated_at": now,
        }

    def _check_group_allowed(self, name: str) -> None:
        allowed = {fold(g) for g in self.client.allowed_groups}
        if allowed and fold(name) not in allowed:
            raise Refused(
                f"Provisioning client {self.client.name!r} may not manage the group {name!r}; "
                "add it to the client's allowed_groups to let it.",
                reason="scim.group_not_allowed",
            )

    def _members(self, resource: Resource[Any]) -> dict[str, str | None]:
        """The group's members (user id -> display), each a user this client provisioned."""
        members: dict[str, str | None] = {}
        for member in cast(Group, resource).members or []:
            if member.type not in (None, "User") or not member.value:
                raise InvalidValueException(detail="Group members must be users (nested groups are not supported)")
            members[member.value] = member.display
        ids = sorted(members)
        found = {u.id for u in queries.find_scim_users(self.session, store=self.store, ids=ids)} if ids else set()
        unknown = sorted(set(ids) - found)
        if unknown:
            raise InvalidValueException(detail=f"No user {unknown[0]!r} is provisioned by this client")
        return members

    def _user_names(self, ids: list[str]) -> list[str]:
        if not ids:
            return []
        return sorted(u.user_name for u in queries.find_scim_users(self.session, store=self.store, ids=ids))

    def _principal_ids(self, user: ScimUser) -> list[int]:
        return [p.id for p in principals_of(self.session, self.client, user)]

    def _record(self, reason: str, resource_id: str, detail: dict[str, Any]) -> None:
        self.audit.append(
            self.session,
            event="scim",
            outcome="ok",
            reason=reason,
            principal=f"scim:{self.client.name}",
            store=self.store,
            ctx=self.ctx,
            detail={"client": self.client.name, "id": resource_id, **detail},
        )


def _document(resource: Resource[Any]) -> dict[str, Any]:
    dumped: dict[str, Any] = resource.model_dump(mode="json")
    return {key: value for key, value in dumped.items() if key not in _NOT_STORED}


def _primary_email(document: dict[str, Any]) -> str | None:
    emails = [e for e in document.get("emails") or [] if isinstance(e, dict) and isinstance(e.get("value"), str)]
    chosen = next((e for e in emails if e.get("primary") is True), emails[0] if emails else None)
    return fold(chosen["value"]) if chosen else None


def _etag(version: int) -> str:
    return f'W/"{version}"'


def _check_version(row: ScimUser | ScimGroup, expected: str | None) -> None:
    if expected is not None and expected != _etag(row.version):
        raise PreconditionFailedException(detail="The resource changed since it was read")
