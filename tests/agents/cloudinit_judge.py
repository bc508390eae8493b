"""cloud-init (Debian's package) judges the metadata service as it would at boot: its
EC2, GCE and Azure datasources crawl it at the real addresses, and must fetch every
path they ask for (no 404, no fallback to an older API version) and find the SSH key.

    python3 cloudinit_judge.py '<JSON: {"mode": "direct"|"proxy", "expect": {...}}>'

Only the platform checks that read the machine's DMI tables are bypassed (off-cloud
they say "not this cloud"); everything that talks to the metadata service is
cloud-init's own code. In "direct" mode the judge runs on the host against `imds-proxy
emulate`, reached through HTTP_PROXY (the requests library's own mechanism: URLs keep
the real addresses); in "proxy" mode it runs in an unmodified container and reaches
169.254.169.254 and metadata.google.internal as on a VM.

Prints one JSON line per datasource ({"judge", "ok", ...} or {..., "error"}) and exits
1 if any failed.
"""

import json
import logging
import sys
import tempfile
import traceback

from cloudinit import distros, helpers, url_helper
from cloudinit.sources import DataSourceAzure, DataSourceEc2, DataSourceGCE

IMDS = "http://169.254.169.254"


class Failure(Exception):
    """A verdict against the metadata service."""


def must(cond, msg):
    if not cond:
        raise Failure(msg)


class Recorder:
    """Every request cloud-init makes, with its answer's status: wraps url_helper's
    readurl, through which all of its metadata reads and writes go."""

    def __init__(self):
        self.seen = []
        self.original = url_helper.readurl

    def install(self):
        def recorded(url, *args, **kwargs):
            method = kwargs.get("request_method") or ("POST" if kwargs.get("data") else "GET")
            try:
                resp = self.original(url, *args, **kwargs)
            except url_helper.UrlError as e:
                self.seen.append((method, url, e.code))
                raise
            self.seen.append((method, url, resp.code))
            return resp

        url_helper.readurl = recorded
        DataSourceAzure.readurl = recorded

    def take(self):
        seen, self.seen = self.seen, []
        return seen


def failed(seen):
    return ["%s %s -> %s" % s for s in seen if s[2] != 200]


def datasource(cls, ds_name, ds_cfg):
    tmp = tempfile.mkdtemp(prefix="cloudinit-judge-")
    paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
    distro = distros.fetch("debian")("debian", {}, paths)
    sys_cfg = {"datasource": {ds_name: ds_cfg}}
    return cls(sys_cfg, distro, paths)


def ec2(expect, rec):
    ds = datasource(
        DataSourceEc2.DataSourceEc2,
        "Ec2",
        {"metadata_urls": [IMDS], "timeout": 5, "max_wait": 10},
    )
    # The one bypass: identify_platform() reads DMI, which says "not AWS" off-cloud.
    ds._cloud_name = DataSourceEc2.CloudNames.AWS
    must(ds._get_data(), "the EC2 datasource found no metadata service")
    seen = rec.take()
    must(not failed(seen), "requests that failed: %s" % failed(seen))
    version = ds._crawled_metadata.get("_metadata_api_version")
    must(version == "2021-03-23", "crawled version %r, not the newest cloud-init knows" % version)
    must(
        any(m == "PUT" and u.endswith("/latest/api/token") for m, u, _ in seen),
        "no IMDSv2 session was opened",
    )
    must(ds.get_instance_id() == expect["ec2_instance_id"], "instance id %r" % ds.get_instance_id())
    keys = ds.get_public_ssh_keys()
    must(expect["ssh_key"] in keys, "the SSH key was not found: %r" % keys)
    md = ds.metadata
    for key in ("block-device-mapping", "network", "placement", "services", "tags", "security-groups"):
        must(key in md, "meta-data lacks %s" % key)
    must(ds.availability_zone == expect["ec2_zone"], "zone %r" % ds.availability_zone)
    must(ds.region == expect["ec2_region"], "region %r" % ds.region)
    identity = ds._crawled_metadata["dynamic"]["instance-identity"]
    for key in ("document", "pkcs7", "rsa2048", "signature"):
        must(key in identity, "instance-identity lacks %s" % key)
    must(ds.identity.get("instanceId") == expect["ec2_instance_id"], "identity document %r" % ds.identity)
    return {"requests": len(seen), "version": version, "keys": len(keys)}


def gce(expect, rec, mode):
    ds = datasource(DataSourceGCE.DataSourceGCE, "GCE", {})
    address = IMDS + "/computeMetadata/v1/" if mode == "direct" else None
    if mode == "direct":
        # The host cannot resolve metadata.google.internal; the container can (the
        # daemon answers that name), so only "direct" writes by address.
        DataSourceGCE.GUEST_ATTRIBUTES_URL = IMDS + "/computeMetadata/v1/instance/guest-attributes"
    # platform_check=False: the one bypass (DMI's product name says "Google" on GCE).
    ret = DataSourceGCE.read_md(address=address, url_params=ds.get_url_params(), platform_check=False)
    must(ret["success"], "read_md: %s" % ret.get("reason"))
    md = ret["meta-data"]
    must(md["instance-id"] == expect["gce_instance_id"], "instance id %r" % md["instance-id"])
    must(md["availability-zone"] == expect["gce_zone"], "zone %r" % md["availability-zone"])
    keys = DataSourceGCE._parse_public_keys(md["public-keys-data"], default_user="demo")
    must(expect["ssh_key"] in keys, "the SSH key was not found: %r" % keys)
    # Publishing host keys, as cloud-init does after generating them.
    DataSourceGCE._write_host_key_to_guest_attributes("ssh-ed25519", expect["host_key"])
    seen = rec.take()
    must(not failed(seen), "requests that failed: %s" % failed(seen))
    ga = DataSourceGCE.GUEST_ATTRIBUTES_URL + "/hostkeys/ssh-ed25519"
    back = url_helper.readurl(ga, headers=DataSourceGCE.HEADERS)
    must(back.contents.decode() == expect["host_key"], "the host key read back: %r" % back.contents)
    return {"requests": len(seen) + 1, "keys": len(keys)}


def azure(expect, rec):
    ds = datasource(DataSourceAzure.DataSourceAzure, "Azure", {})
    md = ds.get_imds_data_with_api_fallback(retries=1)
    seen = rec.take()
    must(md, "no instance metadata")
    must(not failed(seen), "requests that failed (a 400 means a fallback): %s" % failed(seen))
    wanted = "api-version=%s" % DataSourceAzure.IMDS_VER_WANT
    must(
        all(wanted in u and "extended=true" in u for _, u, _ in seen),
        "not every request asked %s with extended=true: %s" % (wanted, seen),
    )
    must(md["compute"]["vmId"] == expect["azure_vm_id"], "vmId %r" % md["compute"]["vmId"])
    keys = ds._get_public_keys_from_imds(md)
    must(expect["ssh_key"] in keys, "the SSH key was not found: %r" % keys)
    must(ds._ppstype_from_imds(md) == "None", "ppsType %r" % ds._ppstype_from_imds(md))
    must(DataSourceAzure._username_from_imds(md) == "azureuser", "admin user")
    must(DataSourceAzure._hostname_from_imds(md) == "demo-vm", "host name")
    must(DataSourceAzure._userdata_from_imds(md), "user data")
    must(ds.validate_imds_network_metadata(md), "the network metadata does not validate")
    nics = azure_network(ds, md, expect["azure_network"])
    return {"requests": len(seen), "version": DataSourceAzure.IMDS_VER_WANT, "keys": len(keys), "nics": nics}


def azure_network(ds, md, file_network):
    """The network config cloud-init derives from IMDS (its own network_config, as at
    boot) must be the one the file's interfaces call for: one ethernet per interface,
    in order, matched by its MAC; the primary IPv4 (and IPv6 when the file has one) by
    DHCP, any further address of each family static with its subnet's prefix. The
    served section must be the file's, so the primary addresses are the file's too."""
    must(md["network"] == file_network, "served network %r, the file says %r" % (md["network"], file_network))
    ds._metadata_imds = md
    derived = ds.network_config
    ethernets = derived.get("ethernets", {})
    wanted = file_network["interface"]
    must(len(ethernets) == len(wanted), "%d interfaces derived, the file has %d: %r" % (len(ethernets), len(wanted), derived))
    for idx, nic in enumerate(wanted):
        name = "eth%d" % idx
        dev = ethernets.get(name)
        must(dev, "no %s derived: %r" % (name, derived))
        mac = DataSourceAzure.normalize_mac_address(nic["macAddress"]).lower()
        must(dev.get("match", {}).get("macaddress") == mac, "%s matches %r, not MAC %s" % (name, dev.get("match"), mac))
        must(dev.get("set-name") == name, "%s is named %r" % (name, dev.get("set-name")))
        statics = []
        for family, dhcp in (("ipv4", "dhcp4"), ("ipv6", "dhcp6")):
            addresses = nic.get(family, {}).get("ipAddress", [])
            # cloud-init asks DHCPv4 on every interface it configures, DHCPv6 only
            # where IMDS lists an IPv6 address.
            want_dhcp = True if family == "ipv4" else bool(addresses)
            must(dev.get(dhcp) is want_dhcp, "%s %s is %r, the file has %d %s addresses" % (name, dhcp, dev.get(dhcp), len(addresses), family))
            prefix = (nic[family].get("subnet") or [{}])[0].get("prefix", "24" if family == "ipv4" else "128") if addresses else None
            statics += ["%s/%s" % (a["privateIpAddress"], prefix) for a in addresses[1:]]
        must(sorted(dev.get("addresses", [])) == sorted(statics), "%s static addresses %r, the file says %r" % (name, dev.get("addresses"), statics))
    return len(ethernets)


def main():
    plan = json.loads(sys.argv[1])
    mode, expect = plan["mode"], plan["expect"]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rec = Recorder()
    rec.install()
    bad = False
    for name, run in (
        ("cloud-init ec2", lambda: ec2(expect, rec)),
        ("cloud-init gce", lambda: gce(expect, rec, mode)),
        ("cloud-init azure", lambda: azure(expect, rec)),
    ):
        line = {"judge": name}
        try:
            line.update(run())
            line["ok"] = True
        except Failure as e:
            line.update(ok=False, error=str(e))
        except Exception as e:  # noqa: BLE001 - cloud-init failing in any way is a verdict
            where = traceback.extract_tb(e.__traceback__)[-1]
            line.update(ok=False, error="%s: %s (at %s:%d)" % (type(e).__name__, e, where.filename, where.lineno))
        rec.take()
        bad = bad or not line["ok"]
        print(json.dumps(line, sort_keys=True), flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
