"""azure-identity judges the Azure IMDS managed-identity endpoint, from inside a container.

serve expects: {"scope", "default_token", "user_assigned": [{"client_id", "resource_id",
  "token"}, ...]}
  ManagedIdentityCredential() gets `default_token` (the system-assigned identity, or the
  one the container is pinned to); each user-assigned identity, named by client id and by
  resource id, gets its own token; DefaultAzureCredential (whose probe omits the Metadata
  header) gets `default_token` too.
refuse expects: {"scope", "other": {"client_id", "resource_id"}}
  Asking for another container's identity, by client id or by resource id, fails as an
  unassigned identity does: CredentialUnavailableError naming "Identity not found".
"""

import time

from common import Failure, must, tail


def _token(credential, scope, what):
    from azure.core.exceptions import ClientAuthenticationError

    try:
        return credential.get_token(scope)
    except ClientAuthenticationError as e:  # CredentialUnavailableError is one too
        raise Failure("%s: %s: %s" % (what, type(e).__name__, e))


def _expect(access, token, what):
    must(
        access.token == token,
        "%s: not the token configured for that identity (ends %r)"
        % (what, tail(access.token or "")),
    )
    left = access.expires_on - time.time()
    must(left > 60, "%s: expires_on %s leaves %d s" % (what, access.expires_on, left))
    return int(left)


def serve(expect):
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    scope = expect["scope"]
    checked = []
    what = "ManagedIdentityCredential()"
    left = _expect(_token(ManagedIdentityCredential(), scope, what), expect["default_token"], what)
    checked.append(what)
    for ua in expect["user_assigned"]:
        what = "ManagedIdentityCredential(client_id=%s)" % ua["client_id"]
        cred = ManagedIdentityCredential(client_id=ua["client_id"])
        _expect(_token(cred, scope, what), ua["token"], what)
        checked.append(what)
        what = "ManagedIdentityCredential(identity_config={resource_id: %s})" % ua["resource_id"]
        cred = ManagedIdentityCredential(identity_config={"resource_id": ua["resource_id"]})
        _expect(_token(cred, scope, what), ua["token"], what)
        checked.append(what)
    what = "DefaultAzureCredential()"
    _expect(_token(DefaultAzureCredential(), scope, what), expect["default_token"], what)
    checked.append(what)
    return {"checked": checked, "token_expires_in": left}


def refuse(expect):
    from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

    other = expect["other"]
    refused = []
    for what, cred in (
        (
            "ManagedIdentityCredential(client_id=%s)" % other["client_id"],
            lambda: ManagedIdentityCredential(client_id=other["client_id"]),
        ),
        (
            "ManagedIdentityCredential(identity_config={resource_id: %s})" % other["resource_id"],
            lambda: ManagedIdentityCredential(
                identity_config={"resource_id": other["resource_id"]}
            ),
        ),
    ):
        started = time.monotonic()
        try:
            access = cred().get_token(expect["scope"])
        except CredentialUnavailableError as e:
            took = time.monotonic() - started
            must(
                "identity not found" in str(e).lower(),
                "%s failed, but not as an unknown identity: %s" % (what, e),
            )
            # A refusal is an answer, not a retried 404 or a timeout.
            must(took < 5, "%s took %.1f s to be refused" % (what, took))
        except Exception as e:  # noqa: BLE001 - any other failure is a wrong answer
            raise Failure("%s: expected CredentialUnavailableError, got %s: %s" % (what, type(e).__name__, e))
        else:
            raise Failure(
                "%s: another container's identity was served (token ends %r)"
                % (what, tail(access.token))
            )
        refused.append(what)
    return {"refused": refused}

