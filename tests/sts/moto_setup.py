"""Prepares moto (run as a server) as the independent STS of tests/sts.rs.

`python moto_setup.py <endpoint>` with moto's authentication still off: creates the IAM
user `instance` (the EC2 instance's role credentials of the stand-in cloud) allowed to
call sts:AssumeRole, its access key, the roles reader, writer and batch whose trust
policies name that user, and the role untrusted whose trust policy names someone else
(STS refuses it with AccessDenied); then switches moto's authentication on, so that from here on
every request must carry a valid SigV4 signature by a known key. Prints
{"account", "access_key_id", "secret_access_key", "roles": {name: arn}} as JSON.
"""

import json
import sys
import urllib.request

import boto3

ROLES = ("reader", "writer", "batch")


def main():
    endpoint = sys.argv[1]
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    user = iam.create_user(UserName="instance")["User"]
    iam.put_user_policy(
        UserName="instance",
        PolicyName="assume-any",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="instance")["AccessKey"]
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "sts:AssumeRole",
                    # moto matches principals literally: the user, not the account.
                    "Principal": {"AWS": [user["Arn"]]},
                }
            ],
        }
    )
    roles = {}
    for name in ROLES:
        roles[name] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    stranger = trust.replace(user["Arn"], user["Arn"].replace(":user/instance", ":user/someone-else"))
    roles["untrusted"] = iam.create_role(RoleName="untrusted", AssumeRolePolicyDocument=stranger)[
        "Role"
    ]["Arn"]
    # Authentication on from the next request (moto reads the count as a plain body).
    req = urllib.request.Request(
        endpoint + "/moto-api/reset-auth",
        data=b"0",
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 200:
            sys.exit("moto did not switch authentication on: %s" % r.status)
    print(
        json.dumps(
            {
                "account": user["Arn"].split(":")[4],
                "user_arn": user["Arn"],
                "access_key_id": key["AccessKeyId"],
                "secret_access_key": key["SecretAccessKey"],
                "roles": roles,
            }
        )
    )


if __name__ == "__main__":
    main()
