"""What every judge shares: a checked environment and precise failures.

The judges run inside unmodified containers and reach the metadata service the way the
SDKs do by default (169.254.169.254, metadata.google.internal). Nothing points an SDK
anywhere: the judges refuse to run if a variable would redirect an SDK or offer it
another credential source, so a verdict is about the metadata service alone.
"""

import os
import urllib.error
import urllib.request

# Variables that would send an SDK somewhere other than its default metadata address,
# skip its detection, or route its requests through a proxy.
REDIRECTS = (
    "GCE_METADATA_HOST",
    "GCE_METADATA_ROOT",
    "GCE_METADATA_IP",
    "NO_GCE_CHECK",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)

# Other credential (or project) sources an SDK would use before the metadata service.
OTHER_SOURCES = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "CLOUDSDK_CONFIG",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USERNAME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)

# Where the SDKs look by default.
IMDS = "169.254.169.254"
GCE_HOST = "metadata.google.internal"


class Failure(Exception):
    """A verdict against the metadata service, with what was asked and what came back."""


def must(condition, message):
    """Fails the judge with `message` unless `condition` holds."""
    if not condition:
        raise Failure(message)


# Set (to the peer's name) in a container that judges a peer metadata proxy reached at
# its own address rather than at 169.254.169.254 (lyft's metadataproxy, which has no
# interception of its own): then, and only then, AWS_EC2_METADATA_SERVICE_ENDPOINT may
# point boto3 at it, and IMDSv1 may be left allowed (the judge's mode says which).
PEER = "IMDS_PROXY_JUDGE_PEER"
PEER_ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"


def check_environment():
    """Refuses an environment that redirects an SDK or offers it other credentials, and
    one where boto3 could fall back to IMDSv1 (the container's only variable turns it
    off, so boto3's credentials prove the IMDSv2 path). A peer's container (PEER set)
    must instead point boto3 at the peer, and nothing else."""
    peer = os.environ.get(PEER)
    allowed = (PEER_ENDPOINT,) if peer else ()
    present = [n for n in REDIRECTS + OTHER_SOURCES if n in os.environ and n not in allowed]
    must(
        not present,
        "the container's environment points an SDK elsewhere or offers it other "
        "credentials (%s): the judges must use the SDKs' defaults" % ", ".join(present),
    )
    if peer:
        must(
            os.environ.get(PEER_ENDPOINT, "").startswith("http://"),
            "%s=%s but %s is not an http:// address" % (PEER, peer, PEER_ENDPOINT),
        )
        must(
            os.environ.get("AWS_EC2_METADATA_V1_DISABLED") in (None, "true"),
            "AWS_EC2_METADATA_V1_DISABLED is neither true nor unset",
        )
    else:
        must(
            os.environ.get("AWS_EC2_METADATA_V1_DISABLED") == "true",
            "AWS_EC2_METADATA_V1_DISABLED is not true: boto3 could fall back to IMDSv1",
        )


def aws_base():
    """Where boto3 asks for instance credentials: the peer's address in a peer's
    container, else the metadata address."""
    return os.environ.get(PEER_ENDPOINT, "http://%s" % IMDS).rstrip("/")


def raw(method, url, headers=None, timeout=5):
    """One plain HTTP request, outside any SDK: (status, headers, body text)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def shown(status, body):
    """A body for a failure message: a refusal in full, but of a 200 answer only its size
    (it may hold another identity's credential)."""
    if status == 200:
        return "(%d bytes, not shown)" % len(body)
    return repr(body[:300])


def tail(secret):
    """The last characters of a generated credential: enough to find it in a log, not
    enough to use it."""
    return secret[-24:]
