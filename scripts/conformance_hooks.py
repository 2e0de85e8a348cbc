"""schemathesis hooks for `make conformance` (scripts/conformance.sh): the state the OpenAPI
document describes but cannot enumerate.

The document states the shape of a list cursor, an event type name and an expiry time; whether a
well-formed value names something that exists (a cursor the service issued, an event type the
organization knows) or is still ahead of the clock depends on the service's data and the time.
Before each request, a value the document allows but the organization's state would refuse is
swapped for one of the same shape that the state accepts. Only schema-valid values are swapped,
so a case's validity (and so which checks judge it) is unchanged; anything else is sent as
generated.
"""

import json
import os
import re
from datetime import datetime, timezone

import schemathesis

CURSOR = os.environ["CONFORMANCE_CURSOR"]
# Event types this organization can publish (built-in, not `webhook.*`).
NAMES = json.loads(os.environ["CONFORMANCE_EVENTS"])
# The key the run authenticates with: revoking or changing it would end the run's meaning.
OWN_KEY = os.environ["CONFORMANCE_KEY_ID"]
FUTURE = "2999-12-31T23:59:59Z"

CURSOR_SHAPE = re.compile(r"^[A-Za-z0-9_-]+$")
NAME_SHAPE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
PATTERN_SHAPE = re.compile(r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$")


def well_formed_name(value):
    return isinstance(value, str) and NAME_SHAPE.match(value) and len(value) <= 100


def known_pattern(pattern):
    if pattern == "*" or pattern in NAMES:
        return True
    return pattern.endswith(".*") and any(n.startswith(pattern[:-1]) for n in NAMES)


def publishable(value):
    """A well-formed name the organization does not know becomes one it does."""
    if well_formed_name(value) and not value.startswith("webhook.") and value not in NAMES:
        return NAMES[0]
    return value


def subscription(value):
    if isinstance(value, str) and PATTERN_SHAPE.match(value) and len(value) <= 102:
        return value if known_pattern(value) else "*"
    return value


def in_the_future(value):
    if not isinstance(value, str):
        return value
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is None:
        return value
    return value if when > datetime.now(timezone.utc) else FUTURE


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    query = case.query
    if isinstance(query, dict):
        cursor = query.get("cursor")
        if isinstance(cursor, str) and CURSOR_SHAPE.match(cursor):
            query["cursor"] = CURSOR
    if path == "/api/v1/keys/{id}" and (case.path_parameters or {}).get("id") == OWN_KEY:
        case.path_parameters["id"] = "00000000-0000-4000-8000-000000000000"
    body = case.body
    if not isinstance(body, dict):
        return
    if path in ("/api/v1/webhooks", "/api/v1/webhooks/{id}") and isinstance(body.get("events"), list):
        body["events"] = [subscription(e) for e in body["events"]]
    elif path == "/api/v1/events" and "event" in body:
        body["event"] = publishable(body["event"])
    elif path == "/api/v1/events/batch" and isinstance(body.get("events"), list):
        for event in body["events"]:
            if isinstance(event, dict) and "event" in event:
                event["event"] = publishable(event["event"])
    elif path in ("/api/v1/sources", "/api/v1/sources/{id}") and "event_type" in body:
        body["event_type"] = publishable(body["event_type"])
    elif path in ("/api/v1/keys", "/api/v1/keys/{id}") and "expires_at" in body:
        body["expires_at"] = in_the_future(body["expires_at"])
