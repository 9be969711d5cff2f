"""Schemathesis hooks for the fuzz run of the two operations that end a token's life.

`POST /api/v1/auth/logout` revokes the token it is called with and `POST /api/v1/me/password`
revokes the account's other tokens (and, after ten wrong current passwords, throttles the
account), so one shared token cannot carry them: every generated case gets an account of its own,
registered just before it is sent, all with the same password. Half of the password changes that
carry a `current_password` string are given that password, so the change itself (204) is reached,
not only its refusals. Every answer's status is written to a file, for the test to count.

Read from the environment: MOVIESTORE_FUZZ_URL (the server's base URL), MOVIESTORE_FUZZ_PASSWORD
(the throwaway accounts' password) and MOVIESTORE_FUZZ_STATUSES (the file the statuses go to).
"""

import json
import os
import threading
import urllib.request
import uuid

import schemathesis

BASE_URL = os.environ["MOVIESTORE_FUZZ_URL"].rstrip("/")
PASSWORD = os.environ["MOVIESTORE_FUZZ_PASSWORD"]
STATUSES = os.environ["MOVIESTORE_FUZZ_STATUSES"]
_written = threading.Lock()


def register():
    """A new customer's token."""
    name = "fuzz-" + uuid.uuid4().hex[:16]
    body = {"username": name, "email": name + "@example.com", "password": PASSWORD}
    request = urllib.request.Request(
        BASE_URL + "/api/v1/auth/register",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["token"]


# No caching: a token is used by one case only.
@schemathesis.auth(refresh_interval=None)
class ThrowawayAccount:
    def get(self, case, context):
        return register()

    def set(self, case, token, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = "Bearer " + token


@schemathesis.hook
def before_call(context, case, **kwargs):
    body = case.body
    if (
        case.path == "/api/v1/me/password"
        and isinstance(body, dict)
        and isinstance(body.get("current_password"), str)
        and uuid.uuid4().int % 2 == 0
    ):
        body["current_password"] = PASSWORD


@schemathesis.hook
def after_call(context, case, response):
    with _written, open(STATUSES, "a", encoding="utf-8") as statuses:
        statuses.write(f"{case.method.upper()} {case.path} {response.status_code}\n")
