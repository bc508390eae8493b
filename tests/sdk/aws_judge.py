"""boto3 judges the EC2 instance metadata service (IMDSv2 only), from inside a container.

serve expects: {"role", "access_key_id", "secret_access_key", "session_token", "region"}
  With IMDSv1 turned off in botocore's own configuration, boto3 resolves credentials
  from the instance role ("iam-role"), and they are the expected role's; botocore's
  region lookup reads the instance's placement.
absent expects: {}
  The container is pinned to a role the instance does not have: boto3 finds no
  credentials at all (rather than the instance's role).
refuse expects: {"other_role", "listing"}
  Over plain IMDSv2, another role is 404, and the role listing names exactly `listing`
  (404 when that is empty).
"""

import datetime

from common import IMDS, Failure, must, raw, shown

BASE = "http://%s" % IMDS
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
CREDS = "/latest/meta-data/iam/security-credentials/"


def _session():
    """A botocore session that, as botocore itself reports, will not use IMDSv1."""
    import botocore.session

    session = botocore.session.get_session()
    must(
        session.get_config_variable("ec2_metadata_v1_disabled") is True,
        "botocore does not see IMDSv1 as disabled: its credentials would not prove IMDSv2",
    )
    return session


def serve(expect):
    import boto3
    import botocore.exceptions
    import botocore.utils

    session = _session()
    # botocore's own region lookup (what defaults_mode=auto uses); it reads
    # placement/availability-zone/.
    region = botocore.utils.IMDSRegionProvider(session).provide()
    must(
        region == expect["region"],
        "region from instance metadata %r, expected %r" % (region, expect["region"]),
    )
    try:
        creds = boto3.Session(botocore_session=session, region_name=region).get_credentials()
    except botocore.exceptions.BotoCoreError as e:
        raise Failure("boto3 credential resolution failed: %s: %s" % (type(e).__name__, e))
    must(creds is not None, "boto3 found no credentials (the instance role was not served)")
    must(creds.method == "iam-role", "credentials came from %r, not iam-role" % creds.method)
    frozen = creds.get_frozen_credentials()
    must(
        frozen.access_key == expect["access_key_id"],
        "AccessKeyId %r, expected role %s's %r"
        % (frozen.access_key, expect["role"], expect["access_key_id"]),
    )
    must(
        frozen.secret_key == expect["secret_access_key"],
        "SecretAccessKey is not role %s's" % expect["role"],
    )
    must(frozen.token == expect["session_token"], "Token is not role %s's" % expect["role"])
    expiry = getattr(creds, "_expiry_time", None)
    must(expiry is not None, "boto3's instance-role credentials carry no expiry")
    left = (expiry - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    must(left > 600, "credentials expire at %s, %d s from now" % (expiry, left))
    return {
        "method": creds.method,
        "access_key_id": frozen.access_key,
        "region": region,
        "expires_in": int(left),
    }


def absent(expect):
    import boto3

    creds = boto3.Session(botocore_session=_session()).get_credentials()
    must(
        creds is None,
        "boto3 found credentials (from %s, key %r) for a container whose role the "
        "instance does not have"
        % (getattr(creds, "method", "?"), getattr(creds, "access_key", "?")),
    )
    return {"credentials": None}


def _session_token():
    status, headers, token = raw("PUT", BASE + "/latest/api/token", TTL)
    must(status == 200 and token, "PUT /latest/api/token: %s %r" % (status, token[:200]))
    return {"X-aws-ec2-metadata-token": token}


def refuse(expect):
    auth = _session_token()
    other = expect["other_role"]
    status, _, body = raw("GET", BASE + CREDS + other, auth)
    must(
        status == 404,
        "GET %s%s (a role not the container's): %s %s, expected 404"
        % (CREDS, other, status, shown(status, body)),
    )
    status, _, listing = raw("GET", BASE + CREDS, auth)
    if expect["listing"]:
        must(status == 200, "GET %s: %s %s" % (CREDS, status, listing[:200]))
        must(
            listing.split() == expect["listing"],
            "GET %s lists %r, expected exactly %r" % (CREDS, listing, expect["listing"]),
        )
    else:
        must(
            status == 404,
            "GET %s: %s %r, expected 404 (no role)" % (CREDS, status, listing[:200]),
        )
    return {"refused": other, "listing": listing.split() if status == 200 else None}
