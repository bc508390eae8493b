"""google-auth judges an impersonated GCE service account, from inside a container.

impersonated expects: {"project_id", "email", "scope", "audience", "iam", "instance_email"}
  google.auth.default() detects GCE; the account is `email` (not the instance's own),
  and the IAM Credentials stand-in at `iam` says the access token is that account's,
  for the scope asked; fetch_id_token gets an ID token that verifies (RS256) against
  the stand-in's certificates for the audience asked and no other, naming the account.
  The instance's own account is nowhere in the account listing.
denied expects: {"email"}
  The account is neither the instance's nor allowed: its token is refused (403) and
  google-auth gets no access token.
"""

import json

from common import IMDS, Failure, must, raw, tail

FLAVOR = {"Metadata-Flavor": "Google"}
SA = "http://%s/computeMetadata/v1/instance/service-accounts/" % IMDS


def impersonated(expect):
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
    must(isinstance(creds, compute_engine.Credentials), "not compute_engine.Credentials: %s" % type(creds).__name__)
    must(project == expect["project_id"], "project %r, expected %r" % (project, expect["project_id"]))
    try:
        creds.refresh(request)
    except google.auth.exceptions.RefreshError as e:
        raise Failure("access token refresh failed: %s" % e)
    must(
        creds.service_account_email == expect["email"],
        "service account %r, expected %r" % (creds.service_account_email, expect["email"]),
    )
    status, _, body = raw("GET", "%s/tokeninfo?access_token=%s" % (expect["iam"], creds.token))
    must(status == 200, "the IAM stand-in does not know the access token: %s %s" % (status, body[:200]))
    info = json.loads(body)
    must(info["email"] == expect["email"], "the access token is %r's, expected %r's" % (info["email"], expect["email"]))
    must(expect["scope"] in info["scope"].split(), "token scopes %r lack %r" % (info["scope"], expect["scope"]))

    status, _, listing = raw("GET", SA, FLAVOR)
    must(status == 200, "GET service-accounts/: %s" % status)
    names = [line.rstrip("/") for line in listing.split()]
    must(names == ["default", expect["email"]], "service-accounts/ lists %r" % names)
    must(expect["instance_email"] not in listing, "the instance's own account is listed")

    audience = expect["audience"]
    try:
        id_token = google.oauth2.id_token.fetch_id_token(request, audience)
    except (google.auth.exceptions.GoogleAuthError, ValueError) as e:
        raise Failure("fetch_id_token failed: %s: %s" % (type(e).__name__, e))
    status, _, certs = raw("GET", "%s/certs" % expect["iam"])
    must(status == 200, "GET certs: %s" % status)
    certs = json.loads(certs)
    try:
        claims = jwt.decode(id_token, certs=certs, audience=audience)
    except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
        raise Failure("ID token does not verify: %s" % e)
    must(claims.get("email") == expect["email"], "ID token email %r, expected %r" % (claims.get("email"), expect["email"]))
    try:
        jwt.decode(id_token, certs=certs, audience=audience + "/other")
    except ValueError:
        pass
    else:
        raise Failure("the ID token verified for another audience")
    return {"email": creds.service_account_email, "id_token_tail": tail(id_token), "token_tail": tail(creds.token)}


def denied(expect):
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import Request

    status, _, body = raw("GET", SA + "default/token", FLAVOR)
    must(status == 403, "the token of an account not allowed: %s %s, expected 403" % (status, body[:200]))
    creds, _ = google.auth.default()
    try:
        creds.refresh(Request())
    except google.auth.exceptions.RefreshError:
        return {"refused": expect["email"]}
    raise Failure("google-auth got a token for %s" % expect["email"])
