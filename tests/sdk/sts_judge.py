"""boto3 judges assumed roles, from inside a container (IMDSv2 only, nothing in the
container pointing anywhere but at the instance metadata service).

assumed expects: {"sts", "region", "arn", "role"}
  boto3 resolves instance-role credentials through the proxy, the role listing names
  exactly `role`, and STS (moto at `sts`, which checks the signature and the session
  token) says the credentials are `arn`'s.
none expects: {"sts", "region"} and optionally {"role", "status", "code"}
  boto3 finds no credentials: a container whose policy does not list its role gets none,
  not the instance's. With `role`: its credentials path answers `status` with EC2's
  failure document, whose Code is `code`.
held expects: {"role", "access_key_id"}
  STS is down: boto3 still gets the held credentials of the container's role session.

The two modes below judge a peer reached at its own address (common.PEER), or any
service with IMDSv1 allowed:
no_v2 expects: {"status"}
  IMDSv1 disabled: the service answers the IMDSv2 token PUT with `status`, and boto3
  finds no credentials (it will not fall back to IMDSv1).
assumed_v1 expects: {"sts", "region", "arn", "role"}
  IMDSv1 allowed (AWS_EC2_METADATA_V1_DISABLED unset): as `assumed`, with plain GETs.
"""

import datetime
import json

from common import Failure, aws_base, must, raw

BASE = aws_base()
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
CREDS = "/latest/meta-data/iam/security-credentials/"


def _session(v1_disabled=True):
    import botocore.session

    session = botocore.session.get_session()
    seen = session.get_config_variable("ec2_metadata_v1_disabled")
    must(
        bool(seen) is v1_disabled,
        "botocore sees IMDSv1 as %s, expected %s"
        % ("disabled" if seen else "allowed", "disabled" if v1_disabled else "allowed"),
    )
    return session


def _whose(frozen, expect):
    """STS's word on whose credentials these are, which must be `expect["arn"]`."""
    import boto3

    sts = boto3.Session(
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
        region_name=expect["region"],
    ).client("sts", endpoint_url=expect["sts"])
    try:
        who = sts.get_caller_identity()
    except Exception as e:  # noqa: BLE001 - STS refusing the credentials is the verdict
        raise Failure("STS refused the credentials: %s: %s" % (type(e).__name__, e))
    must(who["Arn"] == expect["arn"], "STS says these are %r, expected %r" % (who["Arn"], expect["arn"]))
    return who["Arn"]


def assumed(expect):
    import boto3
    import botocore.exceptions

    session = _session()
    try:
        creds = boto3.Session(botocore_session=session).get_credentials()
    except botocore.exceptions.BotoCoreError as e:
        raise Failure("boto3 credential resolution failed: %s: %s" % (type(e).__name__, e))
    must(creds is not None, "boto3 found no credentials")
    must(creds.method == "iam-role", "credentials came from %r, not iam-role" % creds.method)
    frozen = creds.get_frozen_credentials()
    left = (creds._expiry_time - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    must(left > 25 * 60, "credentials expire in %d s: inside an SDK's refresh window" % left)
    status, headers, token = raw("PUT", BASE + "/latest/api/token", TTL)
    must(status == 200, "PUT /latest/api/token: %s" % status)
    status, _, listing = raw("GET", BASE + CREDS, {"X-aws-ec2-metadata-token": token})
    must(
        status == 200 and listing.split() == [expect["role"]],
        "the role listing is %s %r, expected exactly %r" % (status, listing[:200], expect["role"]),
    )
    status, _, info = raw("GET", BASE + "/latest/meta-data/iam/info", {"X-aws-ec2-metadata-token": token})
    must(status == 200, "iam/info: %s %r" % (status, info[:200]))
    info = json.loads(info)
    must(
        info.get("Code") == "Success" and info.get("InstanceProfileArn", "").endswith("/" + expect["role"]),
        "iam/info answers %r, not for role %r" % (info, expect["role"]),
    )
    arn = _whose(frozen, expect)
    return {"arn": arn, "access_key_id": frozen.access_key, "expires_in": int(left)}


def none(expect):
    import json

    import boto3

    creds = boto3.Session(botocore_session=_session()).get_credentials()
    must(
        creds is None,
        "boto3 found credentials (from %s) for a container that should have none"
        % getattr(creds, "method", "?"),
    )
    out = {"credentials": None}
    if "role" in expect:
        status, _, token = raw("PUT", BASE + "/latest/api/token", TTL)
        must(status == 200, "PUT /latest/api/token: %s" % status)
        status, _, body = raw("GET", BASE + CREDS + expect["role"], {"X-aws-ec2-metadata-token": token})
        try:
            code = json.loads(body).get("Code")
        except ValueError:
            code = None
        must(
            status == expect["status"] and code == expect["code"],
            "the role's credentials path answered %s %r, expected %s with Code %r"
            % (status, body[:300], expect["status"], expect["code"]),
        )
        out.update(status=status, code=code)
    return out


def held(expect):
    import boto3

    creds = boto3.Session(botocore_session=_session()).get_credentials()
    must(creds is not None and creds.method == "iam-role", "boto3 found no instance-role credentials")
    frozen = creds.get_frozen_credentials()
    must(
        frozen.access_key == expect["access_key_id"],
        "got key %r, expected the held %r" % (frozen.access_key, expect["access_key_id"]),
    )
    left = (creds._expiry_time - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    must(left > 25 * 60, "held credentials expire in %d s" % left)
    return {"access_key_id": frozen.access_key, "expires_in": int(left)}


def no_v2(expect):
    import boto3
    import botocore.exceptions

    status, _, body = raw("PUT", BASE + "/latest/api/token", TTL)
    must(
        status == expect["status"],
        "PUT /latest/api/token answered %s %r, expected %s" % (status, body[:200], expect["status"]),
    )
    try:
        creds = boto3.Session(botocore_session=_session()).get_credentials()
        how = "none found"
    except botocore.exceptions.BotoCoreError as e:
        creds, how = None, "%s: %s" % (type(e).__name__, e)
    must(
        creds is None,
        "boto3 with IMDSv1 disabled found credentials (from %s)" % getattr(creds, "method", "?"),
    )
    return {"token_status": status, "credentials": None, "boto3": how[:200]}


def assumed_v1(expect):
    import boto3
    import botocore.exceptions

    try:
        creds = boto3.Session(botocore_session=_session(v1_disabled=False)).get_credentials()
    except botocore.exceptions.BotoCoreError as e:
        raise Failure("boto3 credential resolution failed: %s: %s" % (type(e).__name__, e))
    must(creds is not None, "boto3 found no credentials")
    must(creds.method == "iam-role", "credentials came from %r, not iam-role" % creds.method)
    frozen = creds.get_frozen_credentials()
    left = (creds._expiry_time - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    token_status, _, _ = raw("PUT", BASE + "/latest/api/token", TTL)
    status, _, listing = raw("GET", BASE + CREDS)
    must(
        status == 200 and listing.split() == [expect["role"]],
        "the role listing is %s %r, expected exactly %r" % (status, listing[:200], expect["role"]),
    )
    arn = _whose(frozen, expect)
    return {
        "arn": arn,
        "access_key_id": frozen.access_key,
        "expires_in": int(left),
        "token_status": token_status,
    }
