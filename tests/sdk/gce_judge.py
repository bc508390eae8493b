"""google-auth judges the GCE metadata service, from inside a container.

serve expects: {"project_id", "email", "token", "scope", "audience", "issuer"}
  google.auth.default() detects GCE and names the project; the access token and the
  service account are the expected ones; google.oauth2.id_token.fetch_id_token (which
  detects GCE and uses compute_engine.IDTokenCredentials) gets an ID token that verifies
  (RS256) against the keys the service publishes, for the audience asked and no other,
  naming the account.
refuse expects: {"email", "other_email"}
  Another container's service account is invisible: 404 for its token, absent from the
  account listing (which names the container's own).
"""

import datetime
import json

from common import GCE_HOST, IMDS, Failure, must, raw, shown, tail

KEYS_PATH = "/computeMetadata/v1/imds-proxy/identity-keys"
FLAVOR = {"Metadata-Flavor": "Google"}


def serve(expect):
    import google.auth
    import google.auth.exceptions
    import google.oauth2.id_token
    from google.auth import compute_engine, jwt
    from google.auth.transport.requests import Request

    request = Request()
    try:
        creds, project = google.auth.default(scopes=[expect["scope"]])
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise Failure("google.auth.default() did not detect GCE: %s" % e)
    must(
        isinstance(creds, compute_engine.Credentials),
        "google.auth.default() chose %s, not compute_engine.Credentials"
        % type(creds).__name__,
    )
    must(
        project == expect["project_id"],
        "project id %r, expected %r" % (project, expect["project_id"]),
    )

    try:
        creds.refresh(request)
    except google.auth.exceptions.RefreshError as e:
        raise Failure("access token refresh failed: %s" % e)
    must(
        creds.service_account_email == expect["email"],
        "service account %r, expected %r"
        % (creds.service_account_email, expect["email"]),
    )
    must(
        creds.token == expect["token"],
        "access token for %s is not the one configured for it (ends %r)"
        % (expect["email"], tail(creds.token or "")),
    )
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    left = creds.expiry - now  # google-auth keeps expiry as naive UTC
    must(
        left > datetime.timedelta(seconds=60),
        "access token expiry %s leaves %s" % (creds.expiry, left),
    )

    audience = expect["audience"]
    try:
        id_token = google.oauth2.id_token.fetch_id_token(request, audience)
    except (google.auth.exceptions.GoogleAuthError, ValueError) as e:
        raise Failure("fetch_id_token failed: %s: %s" % (type(e).__name__, e))
    must(
        isinstance(id_token, str) and id_token.count(".") == 2,
        "ID token is not a JWT: %r" % (id_token if not isinstance(id_token, str) else id_token[:40]),
    )

    status, headers, body = raw("GET", "http://%s%s" % (GCE_HOST, KEYS_PATH), FLAVOR)
    must(status == 200, "GET %s: %s %s" % (KEYS_PATH, status, body[:300]))
    try:
        keys = json.loads(body)
    except ValueError:
        raise Failure("GET %s is not JSON: %r" % (KEYS_PATH, body[:300]))
    must(
        isinstance(keys, dict) and keys,
        "GET %s: no key id -> PEM map: %r" % (KEYS_PATH, body[:300]),
    )
    header = jwt.decode_header(id_token)
    must(header.get("alg") == "RS256", "ID token header %r: not RS256" % header)
    try:
        claims = jwt.decode(id_token, certs=keys, audience=audience)
    except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
        raise Failure("ID token does not verify against %s: %s" % (KEYS_PATH, e))
    must(
        claims.get("email") == expect["email"],
        "ID token email %r, expected %r" % (claims.get("email"), expect["email"]),
    )
    must(
        claims.get("iss") == expect["issuer"],
        "ID token issuer %r, expected %r" % (claims.get("iss"), expect["issuer"]),
    )
    # The verification is real: the same token must not pass for another audience, nor
    # with its signature altered.
    head, payload, signature = id_token.split(".")
    altered = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    for what, token, aud in (
        ("for an audience it was not issued for", id_token, audience + "/other"),
        ("with an altered signature", ".".join((head, payload, altered)), audience),
    ):
        try:
            jwt.decode(token, certs=keys, audience=aud)
        except ValueError:
            pass
        else:
            raise Failure("ID token verified %s" % what)

    return {
        "project_id": project,
        "email": creds.service_account_email,
        "token_expires_in": int(left.total_seconds()),
        "id_token_kid": header.get("kid"),
        "id_token_sub": claims.get("sub"),
        "id_token_tail": tail(id_token),
    }


def refuse(expect):
    base = "http://%s/computeMetadata/v1/instance/service-accounts/" % IMDS
    other = expect["other_email"]
    status, _, body = raw("GET", base + other + "/token", FLAVOR)
    must(
        status == 404,
        "GET service-accounts/%s/token from another container's identity: %s %s, expected 404"
        % (other, status, shown(status, body)),
    )
    status, _, listing = raw("GET", base, FLAVOR)
    must(status == 200, "GET service-accounts/: %s %s" % (status, listing[:200]))
    names = [line.rstrip("/") for line in listing.split()]
    must(other not in names, "service-accounts/ lists %s: %r" % (other, listing))
    must(
        expect["email"] in names and "default" in names,
        "service-accounts/ lacks default/ or the container's own %s: %r"
        % (expect["email"], listing),
    )
    return {"refused": other, "listing": names}

