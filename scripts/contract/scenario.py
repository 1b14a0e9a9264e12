"""The contract scenario through the Python client generated from the served document.

scripts/contract/run.sh generates the client (openapi-python-client) next to this file,
type-checks both with `mypy --strict` (nothing untyped in this module: mypy.ini), then runs this
against `vpp-broker dev` (demo space: "Demo HQ" at priority 1, "Demo Branch" at priority 2).
Only the generated code talks HTTP; nothing untyped, no casts, no ignores: where one would be
needed, the document is what gets fixed.

Environment: VPP_BASE_URL (the server), VPP_TOKEN (the development JWT).
"""

from __future__ import annotations

import datetime
import os
import time
import uuid
from typing import TypeVar

from httpx import Timeout
from vpp_broker_client import AuthenticatedClient
from vpp_broker_client.api.accounts import get_dead_letter, get_sync_run, list_accounts, list_dead_letters, sync_account
from vpp_broker_client.api.activity import list_activity
from vpp_broker_client.api.assets import get_asset, list_account_assets, list_assets
from vpp_broker_client.api.drift import get_account_drift
from vpp_broker_client.api.notifications import acknowledge_notification, get_notification, list_notifications
from vpp_broker_client.api.plans import apply_plan, create_plan
from vpp_broker_client.api.assignments import (
    allocate_license,
    create_revocation,
    get_assignment,
    list_assignments,
    revoke_assignment,
)
from vpp_broker_client.api.policies import get_policy, put_policy
from vpp_broker_client.api.spaces import list_spaces
from vpp_broker_client.api.subjects import get_device, get_user
from vpp_broker_client.models import (
    Account,
    AccountAssetPage,
    AccountFigures,
    AccountList,
    AccountStatus,
    ActivityAction,
    ActivityItem,
    ActivityPage,
    AllocateBody,
    Allocation,
    AppleCounts,
    Asset,
    AssetDetail,
    AssetInventory,
    AssetInventoryPage,
    AssetProductType,
    AssetSort,
    Assignment,
    AssignmentPage,
    AssignmentState,
    ClearReason,
    DeadLetterPage,
    Device,
    Disallowed,
    DriftClass,
    DriftReport,
    HeldLicense,
    LedgerCounts,
    LicenseType,
    LicenseWish,
    NoLicenseAvailableProblem,
    NoticeKind,
    NoticeScope,
    NoticeState,
    NoticeStateFilter,
    Notification,
    NotificationPage,
    PlanAction,
    PlanBody,
    PlanChange,
    PlanState,
    PlanView,
    Policy,
    PolicyBody,
    PolicySummary,
    PricingParam,
    Problem,
    ProblemType,
    Reservation,
    Revocation,
    RevocationBody,
    RevocationRecord,
    RevokeAsset,
    Rule,
    Severity,
    SkipReason,
    SpacePage,
    SubjectKind,
    SubjectRef,
    SuggestedAction,
    SyncKind,
    SyncRun,
    SyncState,
    TargetKind,
    User,
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


def rid(step: str) -> str:
    """The `x-request-id` this run sends with a request whose rows the activity log must show."""
    return f"contract-{RUN}-{step}"


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
    first = allocate_license.sync_detailed(
        SPACE, client=client, body=body, idempotency_key=key, x_request_id=rid("allocate-device")
    )
    allocation = expect(first, 201, Allocation, "allocate Pages to a device (Idempotency-Key)")
    check(first.headers.get("x-request-id") == rid("allocate-device"), "the x-request-id is echoed")
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
        revoke_assignment.sync_detailed(
            SPACE,
            device_assignment.id,
            client=client,
            reason=f"contract scenario {RUN}: device retired",
            x_request_id=rid("revoke-device"),
        ),
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
            x_request_id=rid("revoke-pages"),
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


def figures_ok(apple: AppleCounts, ledger: LedgerCounts, allocatable: bool, what: str) -> None:
    """The arithmetic every row of the inventory keeps."""
    by = ledger.held_by_state
    check(by.pending + by.associating + by.active == ledger.held, f"{what}: held = pending + associating + active")
    check(apple.available == apple.total - apple.assigned, f"{what}: Apple's available = total - assigned")
    free = apple.total - ledger.held - ledger.assigned_elsewhere
    check(
        0 <= ledger.available_now <= max(free, 0),
        f"{what}: 0 <= available now {ledger.available_now} <= total - held - assigned elsewhere {free}",
    )
    wanted = max(free - ledger.held_back, 0) if allocatable else 0
    check(ledger.available_now == wanted, f"{what}: available now {ledger.available_now}, expected {wanted}")
    if apple.total > 0:
        usage = (ledger.held + ledger.assigned_elsewhere) * 100 / apple.total
        check(
            isinstance(ledger.usage_percent, float) and abs(ledger.usage_percent - usage) < 0.01,
            f"{what}: usage {ledger.usage_percent} = {usage:.2f} %",
        )
    else:
        check(ledger.usage_percent is None, f"{what}: no usage without licenses")


def inventory_ok(asset: AssetInventory | AssetDetail) -> None:
    """Each account's figures, and the space's = the sum of the accounts'."""
    what = f"{asset.adam_id}/{asset.pricing_param}"
    check(len(asset.accounts) > 0, f"{what}: at least one account owns it")
    priorities = [a.priority for a in asset.accounts]
    check(priorities == sorted(priorities), f"{what}: accounts by priority: {priorities}")
    for a in asset.accounts:
        figures_ok(a.apple, a.ledger, a.allocatable, f"{what} at {a.account_name}")
        check(a.allocatable or isinstance(a.not_allocatable_reason, str), f"{what} at {a.account_name}: why not")
    t = asset.totals
    sums: list[tuple[str, int, int]] = [
        ("apple.total", t.apple.total, sum(a.apple.total for a in asset.accounts)),
        ("apple.assigned", t.apple.assigned, sum(a.apple.assigned for a in asset.accounts)),
        ("apple.available", t.apple.available, sum(a.apple.available for a in asset.accounts)),
        ("apple.retired", t.apple.retired, sum(a.apple.retired for a in asset.accounts)),
        ("held", t.ledger.held, sum(a.ledger.held for a in asset.accounts)),
        ("pending", t.ledger.held_by_state.pending, sum(a.ledger.held_by_state.pending for a in asset.accounts)),
        (
            "associating",
            t.ledger.held_by_state.associating,
            sum(a.ledger.held_by_state.associating for a in asset.accounts),
        ),
        ("active", t.ledger.held_by_state.active, sum(a.ledger.held_by_state.active for a in asset.accounts)),
        ("revoking", t.ledger.held_by_state.revoking, sum(a.ledger.held_by_state.revoking for a in asset.accounts)),
        (
            "assigned_elsewhere",
            t.ledger.assigned_elsewhere,
            sum(a.ledger.assigned_elsewhere for a in asset.accounts),
        ),
        ("held_back", t.ledger.held_back, sum(a.ledger.held_back for a in asset.accounts)),
        ("available_now", t.ledger.available_now, sum(a.ledger.available_now for a in asset.accounts)),
    ]
    for name, shown, summed in sums:
        check(shown == summed, f"{what}: the space's {name} {shown} = the accounts' sum {summed}")
    if t.apple.total > 0:
        usage = (t.ledger.held + t.ledger.assigned_elsewhere) * 100 / t.apple.total
        check(
            isinstance(t.ledger.usage_percent, float) and abs(t.ledger.usage_percent - usage) < 0.01,
            f"{what}: the space's usage {t.ledger.usage_percent} = {usage:.2f} %",
        )
    synced = [a.apple.synced_at for a in asset.accounts]
    oldest = None if any(s is None for s in synced) else min(s for s in synced if s is not None)
    check(t.apple.synced_at == oldest, f"{what}: synced_at is the oldest of the accounts' ({t.apple.synced_at})")


def asset_pages(client: AuthenticatedClient, sort: AssetSort) -> list[AssetInventory]:
    """The whole inventory, one asset per page."""
    seen: list[AssetInventory] = []
    cursor: str | Unset = UNSET
    while True:
        page = expect(
            list_assets.sync_detailed(SPACE, client=client, limit=1, cursor=cursor, sort=sort),
            200,
            AssetInventoryPage,
            f"GET assets sort={sort.value} page {len(seen) + 1}",
        )
        check(len(page.items) <= 1, "limit=1 is honoured")
        seen.extend(page.items)
        if not isinstance(page.next_cursor, str):
            return seen
        check(len(seen) < 100, "paging ends")
        cursor = page.next_cursor


def account_figures(asset: AssetInventory, account: Account) -> AccountFigures:
    for figures in asset.accounts:
        if figures.account_id == account.id:
            return figures
    raise AssertionError(f"{asset.adam_id}: no figures of {account.name}")


def assets_step(client: AuthenticatedClient, hq: Account, branch: Account, keynote_etag: str) -> None:
    """The inventory after the revocations: Pages at both accounts, nothing held, the sums add up."""
    whole = expect(
        list_assets.sync_detailed(SPACE, client=client, limit=200), 200, AssetInventoryPage, "GET assets"
    )
    check(not isinstance(whole.next_cursor, str), "one page of 200 holds every asset")
    keys = [(a.adam_id, a.pricing_param.value) for a in whole.items]
    check(len(keys) == len(set(keys)) and len(keys) == 4, f"the four demo assets, once each: {keys}")
    for asset in whole.items:
        inventory_ok(asset)
    pages = [a for a in whole.items if (a.adam_id, a.pricing_param) == (PAGES, PricingParam.STDQ)]
    check(len(pages) == 1, "Pages is listed")
    page_row = pages[0]
    check(
        [a.account_id for a in page_row.accounts] == [hq.id, branch.id],
        f"Pages at Demo HQ then Demo Branch: {[a.account_name for a in page_row.accounts]}",
    )
    check(page_row.product_type == AssetProductType.APP and page_row.revocable, "Pages is a revocable app")
    check(not page_row.has_policy, "Pages has no policy")
    for account, owned in ((hq, 50), (branch, 20)):
        figures = account_figures(page_row, account)
        check(figures.account_name == account.name, f"the account's name: {figures.account_name}")
        check(figures.apple.total == owned, f"{account.name} owns {owned} Pages: {figures.apple.total}")
        check(figures.ledger.held == 0, f"{account.name} holds no Pages license after the revocations")
        check(figures.allocatable, f"{account.name} allocates Pages: {figures.not_allocatable_reason}")
        print(
            f"      Pages at {account.name}: {figures.apple.total} owned, {figures.ledger.held} held, "
            f"{figures.ledger.available_now} available now"
        )
    keynote = [a for a in whole.items if a.adam_id == KEYNOTE]
    check(len(keynote) == 1 and keynote[0].has_policy, "Keynote has its policy")

    for sort in (AssetSort.ASSET, AssetSort.USAGE, AssetSort.AVAILABLE):
        paged = asset_pages(client, sort)
        paged_keys = [(a.adam_id, a.pricing_param.value) for a in paged]
        check(len(paged_keys) == len(set(paged_keys)), f"sort={sort.value}: no asset twice")
        check(sorted(paged_keys) == sorted(keys), f"sort={sort.value}: every asset once: {paged_keys}")
        if sort == AssetSort.ASSET:
            check(paged_keys == keys, "pages of one = the one page, in the same order")
        if sort == AssetSort.AVAILABLE:
            available = [a.totals.ledger.available_now for a in paged]
            check(available == sorted(available), f"sort=available: fewest first: {available}")

    books = expect(
        list_assets.sync_detailed(SPACE, client=client, product_type=AssetProductType.BOOK),
        200,
        AssetInventoryPage,
        "GET assets ?product_type=Book",
    )
    check([a.adam_id for a in books.items] == [BOOK], f"only the book: {[a.adam_id for a in books.items]}")
    check([a.account_id for a in books.items[0].accounts] == [hq.id], "the book is Demo HQ's alone")

    at_branch = expect(
        list_assets.sync_detailed(SPACE, client=client, account_id=branch.id),
        200,
        AssetInventoryPage,
        "GET assets ?account_id=Demo Branch",
    )
    check(
        sorted(a.adam_id for a in at_branch.items) == sorted([PAGES, NUMBERS]),
        f"Demo Branch owns Pages and Numbers: {[a.adam_id for a in at_branch.items]}",
    )
    for asset in at_branch.items:
        inventory_ok(asset)
        check([a.account_id for a in asset.accounts] == [branch.id], f"{asset.adam_id}: Demo Branch's figures alone")

    own = expect(
        list_account_assets.sync_detailed(SPACE, hq.id, client=client),
        200,
        AccountAssetPage,
        "GET Demo HQ's assets",
    )
    check(len(own.items) == 4, f"Demo HQ owns four assets: {len(own.items)}")
    for row in own.items:
        figures_ok(row.apple, row.ledger, row.allocatable, f"Demo HQ's {row.adam_id}")
        listed = [a for a in whole.items if (a.adam_id, a.pricing_param) == (row.adam_id, row.pricing_param)]
        check(len(listed) == 1, f"Demo HQ's {row.adam_id} is in the space's list")
        theirs = account_figures(listed[0], hq)
        check(
            row.ledger == theirs.ledger and row.apple.total == theirs.apple.total,
            f"Demo HQ's {row.adam_id}: the space's list has the same figures",
        )
        check(row.has_policy == listed[0].has_policy, f"Demo HQ's {row.adam_id}: has_policy")

    detail = expect(
        get_asset.sync_detailed(SPACE, PAGES, PricingParam.STDQ, client=client),
        200,
        AssetDetail,
        "GET Pages",
    )
    inventory_ok(detail)
    check([a.account_id for a in detail.accounts] == [hq.id, branch.id], "the detail shows both accounts")
    check(detail.totals.ledger == page_row.totals.ledger, "the detail's figures are the list's")
    check(not isinstance(detail.policy, PolicySummary), "no policy summary without a policy")
    check(len(detail.daily) == 30, f"30 days of movement: {len(detail.daily)}")
    days = [d.day for d in detail.daily]
    check(
        all(b - a == datetime.timedelta(days=1) for a, b in zip(days, days[1:])),
        "consecutive days, oldest first",
    )
    today = datetime.datetime.now(datetime.UTC).date()
    check(abs((today - days[-1]).days) <= 1, f"the last day is today: {days[-1]}")
    allocated = sum(d.allocations for d in detail.daily)
    revoked = sum(d.revocations for d in detail.daily)
    check(allocated >= 2 and revoked >= 2, f"this run's two allocations and revocations: {allocated}, {revoked}")
    forecast = detail.forecast
    check(
        forecast.days_until_exhausted is None and forecast.exhausted_on is None,
        f"no forecast in a fresh database: {forecast.days_until_exhausted}",
    )
    check(isinstance(forecast.reason, str) and forecast.reason != "", "the forecast says why not")
    check(0 <= forecast.history_days < 7, f"too little history: {forecast.history_days} days")
    check(forecast.half_life_days == 14, f"half-life 14 days: {forecast.half_life_days}")
    print(f"      Pages: {allocated} allocated, {revoked} revoked in 30 days; no forecast: {forecast.reason}")

    keynote_detail = expect(
        get_asset.sync_detailed(SPACE, KEYNOTE, PricingParam.STDQ, client=client),
        200,
        AssetDetail,
        "GET Keynote",
    )
    summary = keynote_detail.policy
    check(isinstance(summary, PolicySummary), "Keynote's detail sums up its policy")
    if isinstance(summary, PolicySummary):
        check(f'"{summary.version}"' == keynote_etag, f"the policy's version is its ETag: {summary.version}")
        check((summary.disallowed, summary.reserved) == (2, 0), f"two bans, no reservation: {summary}")

    missing = expect(
        get_asset.sync_detailed(SPACE, "999999999", PricingParam.STDQ, client=client),
        404,
        Problem,
        "GET an asset no account owns",
    )
    check(missing.type_ == ProblemType.URNVPP_BROKERPROBLEMNOT_FOUND, f"404 type: {missing.type_}")


def revoked_license(held: list[HeldLicense], assignment: Assignment, what: str) -> RevocationRecord:
    found = [h for h in held if h.assignment_id == assignment.id]
    check(len(found) == 1, f"{what}: the license is listed once among the past ones")
    license = found[0]
    check(license.state == AssignmentState.REVOKED, f"{what}: revoked: {license.state}")
    check(license.license_type == assignment.license_type, f"{what}: {license.license_type}")
    check(
        (license.asset.adam_id, license.asset.pricing_param) == (PAGES, PricingParam.STDQ),
        f"{what}: Pages: {license.asset.adam_id}",
    )
    check(license.account.id == assignment.account_id, f"{what}: its account")
    check(license.rule == assignment.rule and license.reason == assignment.reason, f"{what}: rule and reason")
    revocation = license.revocation
    if not isinstance(revocation, RevocationRecord):
        raise AssertionError(f"{what}: no revocation record")
    check(revocation.by == license.requested_by, f"{what}: revoked by the caller: {revocation.by}")
    return revocation


def subjects_step(client: AuthenticatedClient, hq: Account, device_assignment: Assignment, user_assignment: Assignment) -> None:
    serial = f"CONTRACT-{RUN}"
    found = expect(get_device.sync_detailed(SPACE, serial, client=client), 200, Device, "GET the device")
    check((found.serial, found.space) == (serial, SPACE), f"the device: {found.serial} in {found.space}")
    check(found.licenses.live == [], f"no live license: {len(found.licenses.live)}")
    check(found.licenses.past_total == 1, f"one past license: {found.licenses.past_total}")
    check(found.user_licenses == [], "no user, no user licenses")
    check(found.first_seen <= found.updated_at, "first seen, then updated")
    revocation = revoked_license(found.licenses.past, device_assignment, "the device's Pages")
    check(
        revocation.reason == f"contract scenario {RUN}: device retired",
        f"the DELETE's reason: {revocation.reason!r}",
    )
    check(revocation.request_id == rid("revoke-device"), f"the DELETE's request id: {revocation.request_id}")
    check(found.licenses.past[0].account.name == hq.name, f"from Demo HQ: {found.licenses.past[0].account.name}")

    user_id = f"contract-user-{RUN.lower()}"
    user = expect(get_user.sync_detailed(SPACE, user_id, client=client), 200, User, "GET the user")
    check(user.id == user_id and user.licenses.live == [], f"the user holds nothing now: {len(user.licenses.live)}")
    check(user.devices == [] and user.devices_total == 0, f"no device names the user: {user.devices}")
    revocation = revoked_license(user.licenses.past, user_assignment, "the user's Pages")
    check(revocation.reason == f"contract scenario {RUN}", f"the revocation's reason: {revocation.reason!r}")
    check(revocation.request_id == rid("revoke-pages"), f"the revocation's request id: {revocation.request_id}")

    unknown = expect(
        get_device.sync_detailed(SPACE, f"CONTRACT-NEVER-{RUN}", client=client),
        404,
        Problem,
        "GET a device the space never saw",
    )
    check(unknown.type_ == ProblemType.URNVPP_BROKERPROBLEMNOT_FOUND, f"404 type: {unknown.type_}")


def activity_step(client: AuthenticatedClient, hq: Account, device_assignment: Assignment) -> None:
    serial = f"CONTRACT-{RUN}"
    log = expect(
        list_activity.sync_detailed(
            SPACE, client=client, subject_kind=SubjectKind.DEVICE, subject_id=serial, limit=200
        ),
        200,
        ActivityPage,
        "GET activity of the device",
    )
    rows = log.items
    check(not isinstance(log.next_cursor, str), "one page holds the device's rows")
    ids = [row.id for row in rows]
    check(ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids), f"newest first: {ids}")
    check(
        all(a.occurred_at >= b.occurred_at for a, b in zip(rows, rows[1:])),
        "occurred_at never increases down the page",
    )
    actions = [row.action for row in reversed(rows)]
    print(f"      {serial}: {' -> '.join(a.value for a in actions)}")
    check(
        actions
        == [
            ActivityAction.ASSIGNMENT_ALLOCATED,
            ActivityAction.ASSIGNMENT_ACTIVATED,
            ActivityAction.ASSIGNMENT_REVOKE_REQUESTED,
            ActivityAction.ASSIGNMENT_REVOKED,
        ],
        "allocated -> activated -> revoke requested -> revoked",
    )
    for row in rows:
        check(row.assignment_id == device_assignment.id, f"{row.action.value}: the device's assignment")
        check(
            row.subject is not None and (row.subject.kind, row.subject.id) == (SubjectKind.DEVICE, serial),
            f"{row.action.value}: the device",
        )
        check(
            (row.adam_id, row.pricing_param, row.account_id) == (PAGES, PricingParam.STDQ, hq.id),
            f"{row.action.value}: Pages at Demo HQ",
        )
    by_action: dict[ActivityAction, ActivityItem] = {row.action: row for row in rows}
    allocated = by_action[ActivityAction.ASSIGNMENT_ALLOCATED]
    check(allocated.request_id == rid("allocate-device"), f"the allocation's request id: {allocated.request_id}")
    check(allocated.rule == Rule.PRIORITY, f"allocated by priority: {allocated.rule}")
    check(allocated.actor == device_assignment.requested_by, f"allocated by the caller: {allocated.actor}")
    asked = by_action[ActivityAction.ASSIGNMENT_REVOKE_REQUESTED]
    check(asked.request_id == rid("revoke-device"), f"the DELETE's request id: {asked.request_id}")
    check(asked.actor == device_assignment.requested_by, f"revocation asked by the caller: {asked.actor}")
    for action in (ActivityAction.ASSIGNMENT_ACTIVATED, ActivityAction.ASSIGNMENT_REVOKED):
        row = by_action[action]
        check(row.actor == "system" and row.request_id is None, f"{action.value}: background work: {row.actor}")
        check(isinstance(row.apple_event_id, str), f"{action.value}: Apple's event")

    paged: list[int] = []
    cursor: str | Unset = UNSET
    other_list_cursor = ""
    while True:
        page = expect(
            list_activity.sync_detailed(
                SPACE, client=client, subject_kind=SubjectKind.DEVICE, subject_id=serial, limit=1, cursor=cursor
            ),
            200,
            ActivityPage,
            f"GET activity of the device page {len(paged) + 1}",
        )
        paged.extend(row.id for row in page.items)
        if not isinstance(page.next_cursor, str):
            break
        check(len(paged) < 100, "paging ends")
        cursor = other_list_cursor = page.next_cursor
    check(paged == ids, f"pages of one = the one page: {paged}")
    check(other_list_cursor != "", "the activity's pages had a cursor")

    same_request = expect(
        list_activity.sync_detailed(SPACE, client=client, request_id=rid("allocate-device")),
        200,
        ActivityPage,
        "GET activity ?request_id=the allocation's",
    )
    check(allocated.id in [row.id for row in same_request.items], "the allocation's row is found by request id")
    check(all(row.request_id == rid("allocate-device") for row in same_request.items), "that request's rows only")
    revoked = expect(
        list_activity.sync_detailed(
            SPACE,
            client=client,
            action=ActivityAction.ASSIGNMENT_REVOKED,
            adam_id=PAGES,
            since=allocated.occurred_at,
        ),
        200,
        ActivityPage,
        "GET activity ?action=assignment.revoked&adam_id=Pages&since=",
    )
    check(
        by_action[ActivityAction.ASSIGNMENT_REVOKED].id in [row.id for row in revoked.items]
        and all(row.action == ActivityAction.ASSIGNMENT_REVOKED for row in revoked.items),
        "the device's release is among Pages' releases",
    )

    # Bad input: a cursor that is none, and one of another list (the generated clients type
    # `sort` as the AssetSort enum, so an unknown sort cannot be sent without a cast).
    for cursor_value, what in (("not-a-cursor", "an unknown cursor"), (other_list_cursor, "the activity's cursor")):
        problem = expect(
            list_assets.sync_detailed(SPACE, client=client, cursor=cursor_value),
            400,
            Problem,
            f"GET assets with {what}",
        )
        check(problem.type_ == ProblemType.URNVPP_BROKERPROBLEMINVALID_PARAMETER, f"400 type: {problem.type_}")
    problem = expect(
        list_assets.sync_detailed(SPACE, client=client, min_usage=101),
        400,
        Problem,
        "GET assets ?min_usage=101",
    )
    check(problem.type_ == ProblemType.URNVPP_BROKERPROBLEMINVALID_PARAMETER, f"400 type: {problem.type_}")


def sync_step(client: AuthenticatedClient, hq: Account) -> None:
    """Refresh (a manual full sync), the drift report, and an Adopt plan: Demo HQ starts with
    three Pages licenses of the MDM it was taken over from (`PREVIOUS-MDM-n`), which the sync
    finds `apple_only` and Adopt makes this deployment's without a call to Apple."""
    response = sync_account.sync_detailed(SPACE, hq.id, client=client, x_request_id=rid("sync"))
    run = expect(response, 202, SyncRun, "POST sync of Demo HQ (Refresh)")
    check(run.kind == SyncKind.FULL, f"a manual sync is full: {run.kind}")
    check(
        response.headers.get("location") == f"/v1/spaces/{SPACE}/accounts/{hq.id}/sync-runs/{run.id}",
        f"Location of the run: {response.headers.get('location')}",
    )
    deadline = time.monotonic() + 60
    while run.state in (SyncState.QUEUED, SyncState.RUNNING):
        check(time.monotonic() < deadline, f"the sync ends within a minute: {run.state}")
        time.sleep(0.2)
        run = expect(get_sync_run.sync_detailed(SPACE, hq.id, run.id, client=client), 200, SyncRun, "GET the run")
    check(run.state == SyncState.SUCCEEDED, f"the sync succeeded: {run.state} {run.error}")
    check(run.requests >= 3 and run.pages_read >= 2, f"it read Apple: {run.requests} requests")

    report = expect(
        get_account_drift.sync_detailed(SPACE, hq.id, client=client, class_=DriftClass.APPLE_ONLY, limit=100),
        200,
        DriftReport,
        "GET Demo HQ's apple_only drift",
    )
    previous = sorted(
        item.subject for item in report.items if isinstance(item.subject, str) and "PREVIOUS-MDM-" in item.subject
    )
    check(report.summary.apple_only >= 1 and len(previous) >= 1, f"the previous MDM's licenses: {previous}")
    check(all(item.class_ == DriftClass.APPLE_ONLY for item in report.items), "only the asked class")
    check(
        all(item.suggested_action == SuggestedAction.ADOPT for item in report.items),
        "apple_only suggests adopt",
    )
    check(
        any(entry.account_id == hq.id and entry.run is not None and entry.run.id == run.id for entry in report.last_sync),
        "the report names the sync that found it",
    )

    planned = expect(
        create_plan.sync_detailed(
            SPACE, client=client, body=PlanBody(action=PlanAction.ADOPT, account_id=hq.id, adam_id=PAGES)
        ),
        201,
        PlanView,
        "POST an Adopt plan for Demo HQ's Pages (the dry run)",
    )
    check(planned.state == PlanState.PLANNED, f"planned, not applied: {planned.state}")
    check(planned.candidates == len(previous), f"every apple_only license is a candidate: {planned.candidates}")
    check(1 <= len(planned.items) <= planned.cap, f"capped: {len(planned.items)} of cap {planned.cap}")
    check(planned.capped == (planned.candidates > len(planned.items)), "capped says whether items were cut")
    check(all(item.change == PlanChange.ADOPT for item in planned.items), "every item adopts")
    adopted = [item.subject for item in planned.items]
    check(all(subject in previous for subject in adopted), f"the plan adopts what the report listed: {adopted}")

    applied = expect(apply_plan.sync_detailed(SPACE, planned.id, client=client), 200, PlanView, "apply the plan")
    check(applied.state == PlanState.APPLIED, f"applied: {applied.state}")
    check(
        not isinstance(applied.outcome, Unset) and applied.outcome is not None
        and applied.outcome.applied == len(planned.items),
        f"every item applied: {applied.outcome}",
    )
    again = expect(apply_plan.sync_detailed(SPACE, planned.id, client=client), 200, PlanView, "apply it again")
    check(again.applied_at == applied.applied_at, "a second apply changes nothing")
    serial = adopted[0].split(":", 1)[1]
    found = expect(get_device.sync_detailed(SPACE, serial, client=client), 200, Device, "GET the adopted device")
    live = found.licenses.live
    check(
        len(live) == 1 and live[0].rule == Rule.ADOPTED and live[0].state == AssignmentState.ACTIVE,
        f"{serial} holds an active adopted license: {[(h.rule, h.state) for h in live]}",
    )
    # An adopted license is the deployment's like any other: revoking it releases it at Apple
    # (and leaves Pages as the next scenario expects it).
    for item in applied.items:
        check(isinstance(item.assignment_id, uuid.UUID), f"the adopted assignment of {item.subject}")
        if isinstance(item.assignment_id, uuid.UUID):
            expect(
                revoke_assignment.sync_detailed(
                    SPACE, item.assignment_id, client=client, reason=f"contract scenario {RUN}: adopted, then retired"
                ),
                202,
                Assignment,
                f"DELETE the adopted license of {item.subject}",
            )


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


def usage_notice(client: AuthenticatedClient, level: int, what: str) -> Notification:
    """Polls the open notifications (at most 30 s) for Numbers' `license.usage` at `level` %."""
    deadline = time.monotonic() + 30
    while True:
        page = expect(
            list_notifications.sync_detailed(
                SPACE, client=client, state=NoticeStateFilter.OPEN, kinds=NoticeKind.LICENSE_USAGE.value
            ),
            200,
            NotificationPage,
            what,
        )
        for notice in page.items:
            asset = notice.asset
            if notice.scope == NoticeScope.ASSET and asset is not None and asset.adam_id == NUMBERS and notice.level == level:
                return notice
        check(time.monotonic() < deadline, f"{what}: no Numbers {level} % notification after 30 s")
        time.sleep(0.5)


def notifications_step(client: AuthenticatedClient) -> None:
    """Numbers (15 licenses) taken over half: the notifier (every second in this run) raises
    `license.usage` 50 % for the asset with what to do; acknowledged; freed again: cleared."""
    detail = expect(
        get_asset.sync_detailed(SPACE, NUMBERS, PricingParam.STDQ, client=client), 200, AssetDetail, "GET Numbers"
    )
    t = detail.totals
    used = t.ledger.held + t.ledger.assigned_elsewhere
    need = max(0, (t.apple.total + 1) // 2 - used)
    check(used < t.apple.total / 2, f"Numbers starts under half used: {used} of {t.apple.total}")
    taken: list[uuid.UUID] = []
    for i in range(need):
        allocation = expect(
            allocate_license.sync_detailed(
                SPACE, client=client, body=allocation_body(NUMBERS, device(f"CONTRACT-NOTICE-{RUN}-{i}"))
            ),
            201,
            Allocation,
            f"allocate Numbers {i + 1} of {need}",
        )
        taken.append(assignment_of(allocation, "Numbers allocation").id)
    notice = usage_notice(client, 50, "GET notifications: Numbers 50 %")
    check(notice.severity == Severity.INFO, f"50 % is info: {notice.severity}")
    check(notice.state == NoticeState.OPEN and notice.cleared_at is None, "open")
    check("licenses" in notice.action, f"an action to take: {notice.action}")
    print(f"      {notice.kind.value} {notice.level} %: {notice.message}; {notice.action}")
    acknowledged = expect(
        acknowledge_notification.sync_detailed(SPACE, notice.id, client=client),
        200,
        Notification,
        "POST notification acknowledge",
    )
    check(acknowledged.acknowledged_by == "developer", f"who acknowledged: {acknowledged.acknowledged_by}")
    check(acknowledged.state == NoticeState.OPEN, "acknowledged, still open")

    for assignment_id in taken:
        expect(
            revoke_assignment.sync_detailed(SPACE, assignment_id, client=client, reason=f"contract scenario {RUN}"),
            202,
            Assignment,
            "DELETE a Numbers assignment",
        )
    deadline = time.monotonic() + 30
    while True:
        now = expect(
            get_notification.sync_detailed(SPACE, notice.id, client=client), 200, Notification, "GET notification"
        )
        if now.state == NoticeState.CLEARED:
            break
        check(time.monotonic() < deadline, "the Numbers notification is cleared within 30 s")
        time.sleep(0.5)
    check(now.cleared_reason == ClearReason.USAGE_BELOW_50_PERCENT, f"why: {now.cleared_reason}")
    check(now.acknowledged_at == acknowledged.acknowledged_at, "the acknowledgement stays")


def dead_letters_step(client: AuthenticatedClient) -> None:
    """Apple work set aside after failing too often: the demo's simulator never fails, so the
    list is empty, and an unknown one is a typed 404."""
    page = expect(list_dead_letters.sync_detailed(SPACE, client=client, limit=10), 200, DeadLetterPage, "GET dead letters")
    check(page.items == [], f"no Apple job failed for good: {page.items}")
    missing = expect(
        get_dead_letter.sync_detailed(SPACE, 987654321, client=client), 404, Problem, "GET an unknown dead letter"
    )
    check(missing.type_ == ProblemType.URNVPP_BROKERPROBLEMNOT_FOUND, f"404 type: {missing.type_}")


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
        assets_step(client, hq, branch, keynote_etag)
        subjects_step(client, hq, device_assignment, user_assignment)
        activity_step(client, hq, device_assignment)
        sync_step(client, hq)
        notifications_step(client)
        dead_letters_step(client)
        cleanup_step(client, keynote_etag)
    print(f"python scenario passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
