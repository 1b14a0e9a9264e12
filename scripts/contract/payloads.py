"""Every event of the demo space's feed, checked against the served document's `webhooks`.

The document's `webhooks` section promises, per event type, the body a webhook receiver gets:
the envelope (`WebhookEvent`) and the schema of its `data` (assignment events, notifications,
other changes). The same events are what the feed serves, so after the scenarios ran (they
allocated, revoked, synced, adopted and raised and cleared a notification), this reads the whole
feed over HTTP and validates each event with an independent JSON Schema implementation
(`jsonschema`, draft 2020-12, the dialect of OpenAPI 3.1) against the schema of its own type.
An event type missing from the document, a field of the wrong type or spelling, or a missing
required field fails the run.

Environment: VPP_BASE_URL (the server), VPP_TOKEN (the development JWT), VPP_OPENAPI (the
document downloaded from the server).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import httpx
from jsonschema import Draft202012Validator

SPACE = "demo"
# Types the scenarios are sure to have caused; each must be seen and valid.
EXPECTED = {
    "assignment.allocated",
    "assignment.active",
    "assignment.revoking",
    "assignment.revoked",
    "notification.raised",
    "notification.cleared",
}


def feed(client: httpx.Client) -> list[dict[str, object]]:
    """Every event of the space, oldest first."""
    events: list[dict[str, object]] = []
    after: str | None = None
    while True:
        params = {"limit": "1000"}
        if after is not None:
            params["after"] = after
        response = client.get(f"/v1/spaces/{SPACE}/events", params=params)
        response.raise_for_status()
        page = response.json()
        batch = page["events"]
        events.extend(batch)
        after = page["next"]
        if len(batch) < 1000:
            return events


def main() -> None:
    with open(os.environ["VPP_OPENAPI"], encoding="utf-8") as f:
        document: dict[str, object] = json.load(f)
    webhooks = document["webhooks"]
    assert isinstance(webhooks, dict), "the document has a webhooks section"
    headers = {"authorization": f"Bearer {os.environ['VPP_TOKEN']}"}
    with httpx.Client(base_url=os.environ["VPP_BASE_URL"], headers=headers, timeout=30) as client:
        events = feed(client)
    seen: Counter[str] = Counter()
    failures: list[str] = []
    validators: dict[str, Draft202012Validator] = {}
    for event in events:
        kind = str(event.get("type"))
        seen[kind] += 1
        if kind not in webhooks:
            failures.append(f"event type {kind!r} is not in the document's webhooks section")
            continue
        if kind not in validators:
            # The whole document is the root, so `#/components/schemas/...` references resolve.
            root = dict(document)
            root["$ref"] = f"#/webhooks/{kind}/post/requestBody/content/application~1json/schema"
            validators[kind] = Draft202012Validator(root)
        for error in validators[kind].iter_errors(event):
            path = "/".join(str(p) for p in error.absolute_path)
            failures.append(f"{kind} {event.get('sequence')}: at /{path}: {error.message}")
    for kind, n in sorted(seen.items()):
        print(f"  {n:5} {kind}")
    missing = EXPECTED - set(seen)
    if missing:
        failures.append(f"the scenarios' events are missing from the feed: {sorted(missing)}")
    if failures:
        for failure in failures[:50]:
            print(f"  FAIL {failure}")
        raise SystemExit(f"{len(failures)} payloads differ from the document")
    print(f"webhook payloads: {len(events)} events of {len(seen)} types match the document")


if __name__ == "__main__":
    main()
