#!/usr/bin/env python3
"""Writes an imds-proxy emulator file (TOML) from the metadata service of the VM it runs
on, so that the emulator mimics that instance:

    python3 emulator-from-vm.py > my-instance.toml
    imds-proxy run --emulator my-instance.toml

Finds which cloud answers at 169.254.169.254 (IMDS_BASE overrides the address) and
copies what its metadata describes: EC2's meta-data tree, key pairs and identity
document; Azure's instance document; GCE's project, instance and service accounts.
Nothing secret is copied: no credentials, tokens or user data (the emulator generates
them, or takes them from settings you add; see examples/emulator.toml). Needs only
Python's standard library.

What is left out, on purpose:
- EC2: no path under a `security-credentials` or `identity-credentials` directory is
  read (iam/security-credentials/<role>, identity-credentials/ec2/...); of iam/ only
  the role's name and iam/info are; user-data is never read.
- Azure: the identity endpoints are asked only for the tenant (identity/info), never
  for a token; the document's userData and customData are dropped.
- GCE: service accounts give only their email, aliases and scopes (token and identity
  are never read); project and instance attributes are copied only when their name is
  in ATTRIBUTES_ALLOWED below (an allow-list: kube-env, startup-script(-url),
  user-data, windows-keys and any attribute not listed are dropped, and named on
  stderr), and ssh-keys only in the lines that are public keys.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.request

BASE = os.environ.get("IMDS_BASE", "http://169.254.169.254").rstrip("/")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# EC2 meta-data directories holding credentials, wherever they appear in the tree.
EC2_SECRET_DIRS = ("security-credentials", "identity-credentials")
# GCE attributes copied (an allow-list): switches and settings that hold no secret.
ATTRIBUTES_ALLOWED = {
    "block-project-ssh-keys",
    "enable-guest-attributes",
    "enable-os-inventory",
    "enable-osconfig",
    "enable-oslogin",
    "enable-oslogin-2fa",
    "enable-windows-ssh",
    "google-logging-enabled",
    "google-monitoring-enabled",
    "os-policy-enabled",
    "serial-port-enable",
    "serial-port-logging-enable",
    "ssh-keys",
    "vmDnsSetting",
}
# A line of ssh-keys that is a public key: user:key-type base64 [comment].
SSH_KEY_LINE = re.compile(
    r"^[A-Za-z0-9._-]+:(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)"
    r"|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+=* ?[^\n]*$"
)


def fetch(path, headers=None, method="GET"):
    req = urllib.request.Request(BASE + path, headers=headers or {}, method=method)
    with OPENER.open(req, timeout=3) as resp:
        return resp.read().decode("utf-8")


def s(v):
    """A TOML string (JSON's escapes are TOML's)."""
    return json.dumps(v if isinstance(v, str) else str(v))


def inline(v):
    if isinstance(v, dict):
        return "{ " + ", ".join(s(k) + " = " + inline(x) for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(inline(x) for x in v) + "]"
    return s(v)


def ec2():
    token = fetch("/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, "PUT")
    h = {"X-aws-ec2-metadata-token": token}
    out = ["[aws]"]
    lines = []

    def walk(prefix):
        for e in fetch("/latest/meta-data/" + prefix, h).splitlines():
            if prefix == "" and e in ("iam/", "public-keys/"):
                continue  # generated from [[aws.roles]] and [[aws.public_keys]]
            if e.rstrip("/") in EC2_SECRET_DIRS:
                continue  # credentials: never read
            if e.endswith("/"):
                walk(prefix + e)
            else:
                key = ".".join(s(p) for p in (prefix + e).split("/"))
                lines.append("%s = %s" % (key, s(fetch("/latest/meta-data/" + prefix + e, h))))

    walk("")
    out += ["", "[aws.meta_data]"] + lines
    try:
        doc = json.loads(fetch("/latest/dynamic/instance-identity/document", h))
        out += ["", "[aws.identity_document]"]
        out += ["%s = %s" % (s(k), inline(v)) for k, v in doc.items() if v is not None]
    except urllib.error.HTTPError:
        pass
    try:
        for entry in fetch("/latest/meta-data/public-keys/", h).splitlines():
            index, name = entry.split("=", 1)
            key = fetch("/latest/meta-data/public-keys/%s/openssh-key" % index, h).strip()
            out += ["", "[[aws.public_keys]]", "name = " + s(name), "openssh_key = " + s(key)]
    except urllib.error.HTTPError:
        pass
    try:
        role = fetch("/latest/meta-data/iam/security-credentials/", h).strip()
        info = json.loads(fetch("/latest/meta-data/iam/info", h))
        out += ["", "[[aws.roles]]", "name = " + s(role), "default = true"]
        out += ["instance_profile_arn = " + s(info["InstanceProfileArn"])]
        out += ["instance_profile_id = " + s(info["InstanceProfileId"])]
    except urllib.error.HTTPError:
        pass
    return out


def azure():
    h = {"Metadata": "true"}
    doc = json.loads(fetch("/metadata/instance?api-version=2021-08-01", h))
    doc.get("compute", {}).pop("userData", None)
    doc.get("compute", {}).pop("customData", None)
    tenant = json.loads(fetch("/metadata/identity/info?api-version=2018-02-01", h))["tenantId"]
    out = ["[azure]", "tenant_id = " + s(tenant)]
    for section, table in doc.items():
        out += ["", "[azure.instance.%s]" % section]
        out += ["%s = %s" % (s(k), inline(v)) for k, v in table.items()]
    out += ["", "# The identities are not in the document: add yours (see examples/emulator.toml)."]
    out += ["# [azure.identity.system]", '# client_id = "..."']
    return out


def attributes(kind, attrs):
    """The allowed attributes; ssh-keys only in its public-key lines."""
    kept = {}
    for k, v in attrs.items():
        if k not in ATTRIBUTES_ALLOWED:
            print("left out %s attribute %s (not known to be free of secrets)" % (kind, k), file=sys.stderr)
            continue
        if k == "ssh-keys":
            lines = str(v).splitlines()
            v = "\n".join(l for l in lines if SSH_KEY_LINE.match(l.strip()))
            if len(v.splitlines()) < len(lines):
                print("left out %d %s ssh-keys lines that are not public keys" % (len(lines) - len(v.splitlines()), kind), file=sys.stderr)
        kept[k] = v
    return kept


def gce():
    h = {"Metadata-Flavor": "Google"}
    md = json.loads(fetch("/computeMetadata/v1/?recursive=true", h))
    p, i = md["project"], md["instance"]
    last = lambda v: str(v).rsplit("/", 1)[-1]
    out = ["[gce]", "project_id = " + s(p["projectId"])]
    out += ["numeric_project_id = " + s(p["numericProjectId"])]
    if "universe" in md:
        out += ["universe_domain = " + s(md["universe"]["universeDomain"])]
    out += ["", "[gce.project_attributes]"]
    out += ["%s = %s" % (s(k), s(v)) for k, v in attributes("project", p.get("attributes", {})).items()]
    out += ["", "[gce.instance]", "id = " + s(i["id"]), "name = " + s(i["name"])]
    out += ["hostname = " + s(i["hostname"]), "zone = " + s(last(i["zone"]))]
    out += ["machine_type = " + s(last(i["machineType"]))]
    for key, field in (("cpu_platform", "cpuPlatform"), ("image", "image")):
        if i.get(field):
            out += ["%s = %s" % (key, s(i[field]))]
    out += ["tags = " + inline(i.get("tags", []))]
    licenses = [l["id"] for l in i.get("licenses", [])]
    if licenses:
        out += ["licenses = " + inline(licenses)]
    sched = i.get("scheduling", {})
    if sched:
        out += ["preemptible = " + ("true" if sched.get("preemptible") == "TRUE" else "false")]
        out += ["on_host_maintenance = " + s(sched.get("onHostMaintenance", "MIGRATE"))]
    attrs = attributes("instance", i.get("attributes", {}))
    out += ["", "[gce.instance.attributes]"] + ["%s = %s" % (s(k), s(v)) for k, v in attrs.items()]
    for nic in i.get("networkInterfaces", []):
        out += ["", "[[gce.instance.network_interfaces]]", "ip = " + s(nic["ip"])]
        out += ["mac = " + s(nic["mac"]), "network = " + s(nic["network"])]
        for key in ("gateway", "subnetmask"):
            if nic.get(key):
                out += ["%s = %s" % (key, s(nic[key]))]
        if nic.get("mtu"):
            out += ["mtu = %d" % int(nic["mtu"])]
        ips = [a["externalIp"] for a in nic.get("accessConfigs", []) if a.get("externalIp")]
        out += ["external_ips = " + inline(ips)]
    for d in i.get("disks", []):
        out += ["", "[[gce.instance.disks]]", "device_name = " + s(d["deviceName"])]
        out += ["index = %d" % int(d["index"]), "mode = " + s(d["mode"]), "type = " + s(d["type"])]
        if d.get("interface") in ("SCSI", "NVME"):
            out += ["interface = " + s(d["interface"])]
    for name, sa in i.get("serviceAccounts", {}).items():
        if name == "default":
            continue
        out += ["", "[[gce.service_accounts]]", "email = " + s(sa["email"])]
        if "default" in sa.get("aliases", []):
            out += ["default = true"]
        out += ["scopes = " + inline(sa.get("scopes", []))]
    out += ["", "[gce.identity]", 'issuer = "https://accounts.google.com"', "lifetime_secs = 3600"]
    return out


def main():
    probes = (
        ("GCE", gce, "/computeMetadata/v1/instance/id", {"Metadata-Flavor": "Google"}),
        ("Azure", azure, "/metadata/versions", {"Metadata": "true"}),
        ("EC2", ec2, None, None),
    )
    found = []
    for name, capture, path, headers in probes:
        try:
            if path:
                fetch(path, headers)
            found.append((name, capture()))
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            print("not %s (%s)" % (name, e), file=sys.stderr)
    if not found:
        sys.exit("no metadata service of GCE, Azure or EC2 answers at %s" % BASE)
    names = " and ".join(n for n, _ in found)
    print("# imds-proxy emulator file captured from the metadata service of a %s instance." % names)
    for _, lines in found:
        print()
        print("\n".join(lines))


if __name__ == "__main__":
    main()
