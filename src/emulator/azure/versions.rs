//! Azure IMDS's api-versions: every one Azure documents is accepted without the file
//! listing it, and the instance document is shaped by the version asked (a field
//! appears from the version that brought it, as on a VM). Pure.

use serde_json::Value as Json;

/// Every documented api-version, oldest first, as `/metadata/versions` lists them
/// (2017-11-01, 2019-01-01 and 2020-07-01 are scheduled-events versions).
pub const DOCUMENTED: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-11-01",
    "2017-12-01",
    "2018-01-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-01-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
];

/// The first version whose `extended=true` adds the `extended` object (cloud-init
/// reads `extended.compute.ppsType` from it).
pub const EXTENDED_SINCE: &str = "2021-03-01";

/// Fields of the instance document and the api-version that brought each, from the
/// "Version introduced" columns of Azure's instance metadata documentation (the
/// compute, storage profile, data disk, encryption settings and resource disk tables).
/// A path is keys joined by `.`, `[]` standing for every item of a list; a field not
/// named here (nor under a named parent) is served in every version. A parent the
/// documentation dates only through its children (`osProfile`, `securityProfile`,
/// `host`, ...) takes its oldest child's version. The network table dates every field
/// (`macAddress`, `ipv4.*`, `ipv6.ipAddress`, `subnet.*`) 2017-04-02, the first
/// version of `/metadata/instance`, so the network section has no entry.
const FIELD_SINCE: &[(&str, &str)] = &[
    ("compute.placementGroupId", "2017-08-01"),
    ("compute.resourceGroupName", "2017-08-01"),
    ("compute.subscriptionId", "2017-08-01"),
    ("compute.tags", "2017-08-01"),
    ("compute.vmScaleSetName", "2017-12-01"),
    ("compute.zone", "2017-12-01"),
    ("compute.plan", "2018-04-02"),
    ("compute.publicKeys", "2018-04-02"),
    ("compute.azEnvironment", "2018-10-01"),
    ("compute.provider", "2018-10-01"),
    ("compute.customData", "2019-02-01"),
    ("compute.resourceId", "2019-03-11"),
    ("compute.storageProfile", "2019-06-01"),
    (
        "compute.storageProfile.dataDisks[].bytesPerSecondThrottle",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].diskCapacityBytes",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].isSharedDisk",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].isUltraDisk",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].opsPerSecondThrottle",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].encryptionSettings.diskEncryptionKey",
        "2021-11-01",
    ),
    (
        "compute.storageProfile.dataDisks[].encryptionSettings.keyEncryptionKey",
        "2021-11-01",
    ),
    // The documentation's example shows the same blob on the OS disk.
    (
        "compute.storageProfile.osDisk.encryptionSettings.diskEncryptionKey",
        "2021-11-01",
    ),
    (
        "compute.storageProfile.osDisk.encryptionSettings.keyEncryptionKey",
        "2021-11-01",
    ),
    ("compute.storageProfile.resourceDisk", "2021-02-01"),
    ("compute.tagsList", "2019-06-04"),
    ("compute.isHostCompatibilityLayerVm", "2020-06-01"),
    ("compute.securityProfile", "2020-06-01"),
    ("compute.securityProfile.encryptionAtHost", "2021-11-01"),
    ("compute.securityProfile.securityType", "2021-12-13"),
    ("compute.osProfile", "2020-07-15"),
    (
        "compute.osProfile.disablePasswordAuthentication",
        "2020-10-01",
    ),
    ("compute.licenseType", "2020-09-01"),
    ("compute.evictionPolicy", "2020-12-01"),
    ("compute.priority", "2020-12-01"),
    ("compute.userData", "2021-01-01"),
    ("compute.extendedLocation", "2021-03-01"),
    ("compute.virtualMachineScaleSet", "2021-03-01"),
    ("compute.platformSubFaultDomain", "2021-10-01"),
    ("compute.additionalCapabilities", "2021-11-01"),
    ("compute.host", "2021-11-15"),
    ("compute.hostGroup", "2021-11-15"),
];

/// The instance document as `version` serves it: every field [`FIELD_SINCE`] dates
/// after `version` taken out, wherever it is (keys match without case, as paths do).
pub fn shape(doc: &mut Json, version: &str) {
    for (path, since) in FIELD_SINCE {
        if version < *since {
            let segments: Vec<&str> = path.split('.').collect();
            remove(doc, &segments);
        }
    }
}

/// Takes out the node `segments` names below `node`; `a[]` walks every item of `a`.
fn remove(node: &mut Json, segments: &[&str]) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    let (key, each) = match first.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (*first, false),
    };
    let Json::Object(map) = node else { return };
    let Some(name) = map.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned() else {
        return;
    };
    if rest.is_empty() {
        map.remove(&name);
        return;
    }
    let child = map.get_mut(&name).expect("the key was just found");
    match (each, child) {
        (true, Json::Array(items)) => items.iter_mut().for_each(|i| remove(i, rest)),
        (false, c) => remove(c, rest),
        (true, _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_versions_are_ordered_and_hold_what_clients_ask_for() {
        assert!(DOCUMENTED.windows(2).all(|w| w[0] < w[1]));
        for v in ["2018-02-01", "2019-06-01", "2021-08-01", "2023-07-01"] {
            assert!(DOCUMENTED.contains(&v), "{v}");
        }
    }

    /// The example's compute and network sections, with one Ultra data disk.
    fn doc() -> Json {
        let cfg = crate::emulator::EmulatorConfig::parse(crate::emulator::EXAMPLE, &|_| None)
            .expect("the example validates");
        let mut doc = cfg.azure.expect("the example has Azure").instance;
        doc["compute"]["storageProfile"]["dataDisks"] = serde_json::json!([{
            "lun": "0", "isUltraDisk": "true", "diskCapacityBytes": "1024",
            "encryptionSettings": {"enabled": "false", "diskEncryptionKey": {"secretUrl": ""}}
        }]);
        doc
    }

    fn has(doc: &Json, path: &str) -> bool {
        let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
        crate::emulator::azure::instance::walk(doc, &segments).is_some()
    }

    #[test]
    fn fields_appear_with_the_version_that_brought_them() {
        for (version, path, served) in [
            ("2017-04-02", "compute/vmId", true),
            ("2017-04-02", "compute/subscriptionId", false),
            ("2017-08-01", "compute/subscriptionId", true),
            ("2019-06-01", "compute/userData", false),
            ("2021-01-01", "compute/userData", true),
            ("2019-06-01", "compute/tagsList", false),
            ("2019-06-04", "compute/tagsList", true),
            ("2018-10-01", "compute/storageProfile", false),
            ("2019-06-01", "compute/storageProfile/osDisk/name", true),
            ("2019-06-01", "compute/storageProfile/dataDisks/0/lun", true),
            (
                "2019-06-01",
                "compute/storageProfile/dataDisks/0/isUltraDisk",
                false,
            ),
            (
                "2021-05-01",
                "compute/storageProfile/dataDisks/0/isUltraDisk",
                true,
            ),
            (
                "2021-05-01",
                "compute/storageProfile/dataDisks/0/diskCapacityBytes",
                true,
            ),
            ("2021-01-01", "compute/storageProfile/resourceDisk", false),
            (
                "2021-02-01",
                "compute/storageProfile/resourceDisk/size",
                true,
            ),
            (
                "2021-08-01",
                "compute/storageProfile/dataDisks/0/encryptionSettings/enabled",
                true,
            ),
            (
                "2021-08-01",
                "compute/storageProfile/dataDisks/0/encryptionSettings/diskEncryptionKey",
                false,
            ),
            (
                "2021-11-01",
                "compute/storageProfile/dataDisks/0/encryptionSettings/diskEncryptionKey",
                true,
            ),
            ("2020-01-01", "compute/securityProfile", false),
            (
                "2020-06-01",
                "compute/securityProfile/secureBootEnabled",
                true,
            ),
            (
                "2020-06-01",
                "compute/securityProfile/virtualTpmEnabled",
                true,
            ),
            (
                "2021-10-01",
                "compute/securityProfile/encryptionAtHost",
                false,
            ),
            (
                "2021-11-01",
                "compute/securityProfile/encryptionAtHost",
                true,
            ),
            ("2020-06-01", "compute/osProfile", false),
            ("2020-07-15", "compute/osProfile/adminUsername", true),
            ("2020-07-15", "compute/osProfile/computerName", true),
            (
                "2020-09-01",
                "compute/osProfile/disablePasswordAuthentication",
                false,
            ),
            (
                "2020-10-01",
                "compute/osProfile/disablePasswordAuthentication",
                true,
            ),
            ("2020-09-01", "compute/priority", false),
            ("2020-12-01", "compute/priority", true),
            ("2020-12-01", "compute/evictionPolicy", true),
            ("2021-02-01", "compute/extendedLocation", false),
            ("2021-03-01", "compute/extendedLocation/name", true),
            ("2021-03-01", "compute/virtualMachineScaleSet/id", true),
            ("2021-10-01", "compute/additionalCapabilities", false),
            (
                "2021-11-01",
                "compute/additionalCapabilities/hibernationEnabled",
                true,
            ),
            ("2021-11-01", "compute/hostGroup", false),
            ("2021-11-15", "compute/hostGroup/id", true),
            ("2021-11-15", "compute/host/id", true),
            ("2017-04-02", "network/interface/0/macAddress", true),
            (
                "2017-04-02",
                "network/interface/0/ipv4/ipAddress/0/privateIpAddress",
                true,
            ),
            (
                "2017-04-02",
                "network/interface/0/ipv4/subnet/0/prefix",
                true,
            ),
            (
                "2017-04-02",
                "network/interface/0/ipv6/ipAddress/0/privateIpAddress",
                true,
            ),
            ("2025-04-07", "compute/a-field-of-the-file", false),
        ] {
            let mut d = doc();
            if path.ends_with("a-field-of-the-file") {
                d["compute"]["a-field-of-the-file"] = Json::from("x");
                shape(&mut d, version);
                assert!(has(&d, path), "a field no table dates stays");
                continue;
            }
            assert!(has(&d, path), "the example holds {path}");
            shape(&mut d, version);
            assert_eq!(has(&d, path), served, "{path} at {version}");
        }
    }

    #[test]
    fn every_dated_field_names_a_documented_version_and_a_compute_path() {
        for (path, since) in FIELD_SINCE {
            assert!(DOCUMENTED.contains(since), "{path}: {since}");
            assert!(path.starts_with("compute."), "{path}");
            assert!(path.split('.').all(|s| !s.is_empty()), "{path}");
        }
    }

    #[test]
    fn keys_match_without_case_and_the_newest_version_keeps_everything() {
        let mut d = serde_json::json!({"compute": {"USERDATA": "x", "vmId": "v"}});
        shape(&mut d, "2019-06-01");
        assert_eq!(d, serde_json::json!({"compute": {"vmId": "v"}}));
        let (mut d, whole) = (doc(), doc());
        shape(&mut d, DOCUMENTED[DOCUMENTED.len() - 1]);
        assert_eq!(d, whole);
    }
}
