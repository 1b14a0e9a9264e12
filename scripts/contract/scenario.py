"""The contract scenario through the Python client generated from the served document.

scripts/contract/run.sh generates the client (openapi-python-client) next to this file,
type-checks both with `mypy --strict` (nothing untyped in this module: mypy.ini), then runs this
against `vpp-broker dev` (demo space: "Demo HQ" at priority 1, "Demo Branch" at priority 2).
Only the generated code talks HTTP; nothing untyped, no casts, no ignores: where one would be
needed, the document is what gets fixed.

Environment: VPP_BASE_URL (the server), VPP_TOKEN (the development JWT).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import TypeVar

from httpx import Timeout
from vpp_broker_client import AuthenticatedClient
from vpp_broker_client.api.accounts import list_accounts
from vpp_broker_client.api.assignments import (
    allocate_license,
    create_revocation,
    get_assignment,
    list_assignments,
    revoke_assignment,
)
from vpp_broker_client.api.policies import get_policy, put_policy
from vpp_broker_client.api.spaces import list_spaces
from vpp_broker_client.models import (
    Account,
    AccountList,
    AccountStatus,
    AllocateBody,
    Allocation,
    Asset,
    Assignment,
    AssignmentPage,
    AssignmentState,
    Disallowed,
    LicenseType,
    LicenseWish,
    NoLicenseAvailableProblem,
    Policy,
    PolicyBody,
    PricingParam,
    Problem,
    ProblemType,
    Reservation,
    Revocation,
    RevocationBody,
    RevokeAsset,
    Rule,
    SkipReason,
    SpacePage,
    SubjectKind,
    SubjectRef,
    TargetKind,
)
from vpp_broker_client.types import UNSET, Response, Unset

SPACE = "demo"
PAGES = "361309726"
KEYNOTE = "361285480"
NUMBERS = "361304891"
BOOK = "1436133720"

RUN = uuid.uuid4().hex[:12].upper()
LIVE = {AssignmentState.PENDING, AssignmentState.ASSOCIATING, AssignmentState.ACTIVE}

T = TypeVar("T")
U = TypeVar("U")


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def expect(response: Response[U], status: int, kind: type[T], what: str) -> T:
    """The parsed body of a response that must have this status and body type."""
    body = response.parsed
    if response.status_code != status or not isinstance(body, kind):
        raise AssertionError(
            f"{what}: expected {status} {kind.__name__}, got {int(response.status_code)} "
            f"{type(body).__name__}: {response.content.decode(errors='replace')[:500]}"
        )
    print(f"  ok  {what}: {status} {kind.__name__}")
    return body


def etag_of(response: Response[U], what: str) -> str:
    etag = response.headers.get("etag")
    check(etag is not None and etag.startswith('"'), f"{what}: a strong ETag, got {etag!r}")
    return etag or ""


def device(serial: str) -> SubjectRef:
    return SubjectRef(kind=SubjectKind.DEVICE, id=serial)


def allocation_body(adam_id: str, subject: SubjectRef, wish: LicenseWish = LicenseWish.AUTO) -> AllocateBody:
    return AllocateBody(
        asset=Asset(adam_id=adam_id, pricing_param=PricingParam.STDQ),
        subject=subject,
        license_type=wish,
        reason=f"contract scenario {RUN}",
    )


def assignment_of(allocation: Allocation, what: str) -> Assignment:
    assignment = allocation.assignment
    if not isinstance(assignment, Assignment):
        raise AssertionError(f"{what}: the allocation carries no assignment")
    return assignment


def wait_for(client: AuthenticatedClient, assignment_id: uuid.UUID, states: set[AssignmentState], what: str) -> Assignment:
    """Polls the assignment (`?wait=3`, at most 30 s) until it reaches one of `states`."""
    deadline = time.monotonic() + 30
    while True:
        assignment = expect(
            get_assignment.sync_detailed(SPACE, assignment_id, client=client, wait=3), 200, Assignment, what
        )
        if assignment.state in states:
            return assignment
        check(time.monotonic() < deadline, f"{what}: still {assignment.state} after 30 s")


def spaces_step(client: AuthenticatedClient) -> None:
    ids: list[str] = []
    cursor: str | Unset = UNSET
    while True:
        page = expect(
            list_spaces.sync_detailed(client=client, limit=1, cursor=cursor),
            200,
            SpacePage,
            "GET /v1/spaces",
        )
        ids.extend(space.id for space in page.items)
        if not isinstance(page.next_cursor, str):
            break
        cursor = page.next_cursor
    check(SPACE in ids, f"the demo space is listed: {ids}")


def accounts_step(client: AuthenticatedClient) -> tuple[Account, Account]:
    accounts: list[Account] = []
    cursor: str | Unset = UNSET
    while True:
        page = expect(
            list_accounts.sync_detailed(SPACE, client=client, cursor=cursor),
            200,
            AccountList,
            "GET /accounts",
        )
        accounts.extend(page.items)
        if not isinstance(page.next_cursor, str):
            break
        cursor = page.next_cursor
    check(len(accounts) == 2, f"two demo accounts, got {len(accounts)}")
    hq, branch = accounts
    check((hq.name, hq.priority) == ("Demo HQ", 1), f"priority 1 is Demo HQ: {hq.name} {hq.priority}")
    check(
        (branch.name, branch.priority) == ("Demo Branch", 2),
        f"priority 2 is Demo Branch: {branch.name} {branch.priority}",
    )
    for account, assets, total in ((hq, 4, 50 + 50 + 10 + 20), (branch, 2, 20 + 5)):
        counts = account.licenses
        check(account.status.state == AccountStatus.ACTIVE, f"{account.name} is active: {account.status.state}")
        check(account.owned_by_this_deployment, f"{account.name} is owned by this deployment")
        check(counts.assets == assets, f"{account.name} has {assets} assets: {counts.assets}")
        check(counts.total == total, f"{account.name} owns {total} licenses: {counts.total}")
        check(
            counts.available == counts.total - counts.held - counts.assigned_elsewhere,
            f"{account.name}: available = total - held - assigned elsewhere ({counts})",
        )
        print(f"      {account.name}: {counts.assets} assets, {counts.total} licenses, {counts.available} available")
    return hq, branch


def policy_step(client: AuthenticatedClient) -> tuple[str, str]:
    # run.sh gives the server a new database and runs this scenario first: no policy exists yet.
    """Keynote's policy: created (201), changed with If-Match (200), a stale If-Match refused (412)."""
    banned = f"CONTRACT-BANNED-{RUN}"
    first = PolicyBody(disallowed=[Disallowed(kind=TargetKind.DEVICE, id=banned)])
    created = put_policy.sync_detailed(SPACE, KEYNOTE, PricingParam.STDQ, client=client, body=first)
    policy = expect(created, 201, Policy, "PUT Keynote policy (new)")
    etag1 = etag_of(created, "PUT Keynote policy")
    location = created.headers.get("location")
    check(location == f"/v1/spaces/{SPACE}/policies/{KEYNOTE}/STDQ", f"Location of the new policy: {location}")
    check(etag1 == f'"{policy.version}"', f"the ETag is the version: {etag1} vs {policy.version}")

    second = PolicyBody(
        disallowed=[
            Disallowed(kind=TargetKind.DEVICE, id=banned),
            Disallowed(kind=TargetKind.GROUP, id=f"contract-banned-{RUN}"),
        ]
    )
    changed = put_policy.sync_detailed(SPACE, KEYNOTE, PricingParam.STDQ, client=client, body=second, if_match=etag1)
    policy = expect(changed, 200, Policy, "PUT Keynote policy, If-Match current")
    etag2 = etag_of(changed, "PUT Keynote policy, If-Match current")
    check(etag2 != etag1 and len(policy.disallowed) == 2, f"a new version with two entries: {etag2}")

    stale = expect(
        put_policy.sync_detailed(SPACE, KEYNOTE, PricingParam.STDQ, client=client, body=first, if_match=etag1),
        412,
        Problem,
        "PUT Keynote policy, If-Match stale",
    )
    check(stale.type_ == ProblemType.URNVPP_BROKERPROBLEMPRECONDITION_FAILED, f"412 type: {stale.type_}")
    check(stale.status == 412, f"412 status member: {stale.status}")

    read = get_policy.sync_detailed(SPACE, KEYNOTE, PricingParam.STDQ, client=client)
    policy = expect(read, 200, Policy, "GET Keynote policy")
    check(etag_of(read, "GET Keynote policy") == etag2, "GET answers the current ETag")
    check(len(policy.disallowed) == 2, "the stale write changed nothing")
    return banned, etag2


def disallowed_step(client: AuthenticatedClient, banned: str) -> None:
    problem = expect(
        allocate_license.sync_detailed(SPACE, client=client, body=allocation_body(KEYNOTE, device(banned))),
        403,
        Problem,
        "allocate Keynote to a disallowed device",
    )
    check(problem.type_ == ProblemType.URNVPP_BROKERPROBLEMSUBJECT_DISALLOWED, f"403 type: {problem.type_}")
    check(isinstance(problem.detail, str) and banned in problem.detail, f"403 detail names the device: {problem.detail}")


def device_license_step(client: AuthenticatedClient, hq: Account) -> Assignment:
    serial = f"CONTRACT-{RUN}"
    key = str(uuid.uuid4())
    body = allocation_body(PAGES, device(serial))
    first = allocate_license.sync_detailed(SPACE, client=client, body=body, idempotency_key=key)
    allocation = expect(first, 201, Allocation, "allocate Pages to a device (Idempotency-Key)")
    check(allocation.created, "the first answer created the assignment")
    check(allocation.rule == Rule.PRIORITY, f"rule priority: {allocation.rule}")
    check(allocation.account_id == hq.id, "served by Demo HQ (priority 1)")
    check(allocation.license_type == LicenseType.DEVICE, f"device-based: {allocation.license_type}")
    check(first.headers.get("idempotent-replayed") is None, "the first answer is no replay")
    assignment = assignment_of(allocation, "allocate Pages")
    check(assignment.state in LIVE, f"a live assignment: {assignment.state}")
    check(
        first.headers.get("location") == f"/v1/spaces/{SPACE}/assignments/{assignment.id}",
        f"Location of the assignment: {first.headers.get('location')}",
    )

    again = allocate_license.sync_detailed(SPACE, client=client, body=body, idempotency_key=key)
    replay = expect(again, 201, Allocation, "the same allocation again (same Idempotency-Key)")
    check(again.headers.get("idempotent-replayed") == "true", "Idempotent-Replayed: true")
    check(assignment_of(replay, "replay").id == assignment.id, "the replay names the same assignment")

    final = wait_for(client, assignment.id, {AssignmentState.ACTIVE, AssignmentState.FAILED}, "GET assignment ?wait")
    check(final.state == AssignmentState.ACTIVE, f"Apple confirmed: {final.state}")
    check(isinstance(final.apple_event_id, str), "the Apple event id is known")
    return final


def user_license_step(client: AuthenticatedClient) -> Assignment:
    user = f"contract-user-{RUN.lower()}"
    subject = SubjectRef(kind=SubjectKind.USER, id=user)
    allocation = expect(
        allocate_license.sync_detailed(
            SPACE, client=client, body=allocation_body(PAGES, subject, LicenseWish.USER), wait=3
        ),
        201,
        Allocation,
        "allocate Pages to a user",
    )
    check(allocation.license_type == LicenseType.USER, f"user-based: {allocation.license_type}")
    assignment = assignment_of(allocation, "allocate Pages to a user")
    check(assignment.subject.kind == SubjectKind.USER and assignment.subject.id == user, "the user holds it")
    final = wait_for(client, assignment.id, {AssignmentState.ACTIVE, AssignmentState.FAILED}, "GET user assignment ?wait")
    check(final.state == AssignmentState.ACTIVE, f"Apple confirmed: {final.state}")
    return final


def no_license_step(client: AuthenticatedClient, hq: Account, branch: Account) -> None:
    """Numbers (10 at HQ, 5 at Branch), every license reserved for someone else: 409."""
    reserved = [
        Reservation(kind=SubjectKind.DEVICE, id=f"CONTRACT-RESERVED-{RUN}-{account.priority}-{i}", account_id=account.id)
        for account, n in ((hq, 10), (branch, 5))
        for i in range(n)
    ]
    held = put_policy.sync_detailed(SPACE, NUMBERS, PricingParam.STDQ, client=client, body=PolicyBody(reserved=reserved))
    expect(held, 201, Policy, "PUT Numbers policy reserving all 15 licenses (new)")
    etag = etag_of(held, "PUT Numbers policy")

    problem = expect(
        allocate_license.sync_detailed(
            SPACE, client=client, body=allocation_body(NUMBERS, device(f"CONTRACT-LATE-{RUN}"))
        ),
        409,
        NoLicenseAvailableProblem,
        "allocate Numbers with every license reserved",
    )
    check(problem.status == 409, f"409 status member: {problem.status}")
    check([skip.account_id for skip in problem.accounts] == [hq.id, branch.id], "both accounts, by priority")
    for skip in problem.accounts:
        check(skip.reason == SkipReason.HELD_FOR_RESERVATIONS, f"{skip.account_name}: {skip.reason}")
        print(f"      {skip.priority} {skip.account_name}: {skip.reason.value} ({skip.detail})")

    released = put_policy.sync_detailed(
        SPACE, NUMBERS, PricingParam.STDQ, client=client, body=PolicyBody(), if_match=etag
    )
    expect(released, 200, Policy, "PUT Numbers policy without reservations (replaced)")


def paging_step(client: AuthenticatedClient, wanted: list[uuid.UUID]) -> None:
    seen: list[uuid.UUID] = []
    pages = 0
    cursor: str | Unset = UNSET
    while True:
        page = expect(
            list_assignments.sync_detailed(
                SPACE, client=client, adam_id=PAGES, limit=1, cursor=cursor
            ),
            200,
            AssignmentPage,
            f"GET assignments page {pages + 1}",
        )
        pages += 1
        check(len(page.items) <= 1, "limit=1 is honoured")
        seen.extend(item.id for item in page.items)
        if not isinstance(page.next_cursor, str):
            break
        check(pages < 100, "paging ends")
        cursor = page.next_cursor
    check(len(seen) == len(set(seen)), "no assignment twice")
    check(all(w in seen for w in wanted), "every assignment of this run is listed")
    whole = expect(
        list_assignments.sync_detailed(SPACE, client=client, adam_id=PAGES, limit=200),
        200,
        AssignmentPage,
        "GET assignments in one page",
    )
    check(not isinstance(whole.next_cursor, str), "one page of 200 holds them all")
    check(seen == [item.id for item in whole.items], f"{pages} pages of one = one page of {len(seen)}")


def revoke_step(client: AuthenticatedClient, device_assignment: Assignment, user_assignment: Assignment) -> None:
    revoked = expect(
        revoke_assignment.sync_detailed(SPACE, device_assignment.id, client=client),
        202,
        Assignment,
        "DELETE the device assignment",
    )
    check(
        revoked.state in {AssignmentState.REVOKING, AssignmentState.REVOKED},
        f"revoking or revoked: {revoked.state}",
    )
    final = wait_for(client, device_assignment.id, {AssignmentState.REVOKED}, "GET revoked assignment ?wait")
    check(final.state == AssignmentState.REVOKED, "Apple released it")

    revocation = expect(
        create_revocation.sync_detailed(
            SPACE,
            client=client,
            body=RevocationBody(asset=RevokeAsset(adam_id=PAGES), reason=f"contract scenario {RUN}"),
        ),
        202,
        Revocation,
        "POST revocations: all of Pages",
    )
    check(
        (revocation.revoking, revocation.dropped, revocation.not_revocable) == (1, 0, 0),
        f"only the user license was live, and Apple is asked to release it: {revocation}",
    )
    final = wait_for(client, user_assignment.id, {AssignmentState.REVOKED}, "GET user assignment ?wait")
    check(final.state == AssignmentState.REVOKED, "the user license is released")
    live = expect(
        list_assignments.sync_detailed(SPACE, client=client, adam_id=PAGES, live=True),
        200,
        AssignmentPage,
        "GET live Pages assignments",
    )
    check(live.items == [], f"no live Pages assignment left: {len(live.items)}")


def cleanup_step(client: AuthenticatedClient, keynote_etag: str) -> None:
    """Empties Keynote's policy. (No DELETE here: openapi-python-client 0.29 leaves a 204 answer
    untyped, which this scenario's rule against untyped values refuses; the TypeScript scenario,
    run next, deletes the policies this one leaves and creates them again.)"""
    expect(
        put_policy.sync_detailed(
            SPACE, KEYNOTE, PricingParam.STDQ, client=client, body=PolicyBody(), if_match=keynote_etag
        ),
        200,
        Policy,
        "PUT Keynote policy without bans (replaced)",
    )


def main() -> None:
    started = time.monotonic()
    client = AuthenticatedClient(
        base_url=os.environ["VPP_BASE_URL"],
        token=os.environ["VPP_TOKEN"],
        raise_on_unexpected_status=True,
        timeout=Timeout(15.0),
    )
    with client:
        spaces_step(client)
        hq, branch = accounts_step(client)
        banned, keynote_etag = policy_step(client)
        disallowed_step(client, banned)
        device_assignment = device_license_step(client, hq)
        user_assignment = user_license_step(client)
        no_license_step(client, hq, branch)
        paging_step(client, [device_assignment.id, user_assignment.id])
        revoke_step(client, device_assignment, user_assignment)
        cleanup_step(client, keynote_etag)
    print(f"python scenario passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
