//! Azure IMDS's api-versions: every one Azure documents is accepted without the file
//! listing it, and the instance document is shaped by the version asked (a field
//! appears from the version that brought it, as on a VM). Pure.

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

/// `compute` fields and the version that brought each, from the schema table of
/// Azure's instance metadata documentation; fields not named here are always served.
const COMPUTE_SINCE: &[(&str, &str)] = &[
    ("placementGroupId", "2017-08-01"),
    ("resourceGroupName", "2017-08-01"),
    ("subscriptionId", "2017-08-01"),
    ("tags", "2017-08-01"),
    ("vmScaleSetName", "2017-12-01"),
    ("zone", "2017-12-01"),
    ("plan", "2018-04-02"),
    ("publicKeys", "2018-04-02"),
    ("azEnvironment", "2018-10-01"),
    ("provider", "2018-10-01"),
    ("customData", "2019-02-01"),
    ("resourceId", "2019-03-11"),
    ("storageProfile", "2019-06-01"),
    ("tagsList", "2019-06-04"),
    ("isHostCompatibilityLayerVm", "2020-06-01"),
    ("securityProfile", "2020-06-01"),
    ("licenseType", "2020-09-01"),
    ("evictionPolicy", "2020-12-01"),
    ("priority", "2020-12-01"),
    ("osProfile", "2021-01-01"),
    ("userData", "2021-01-01"),
    ("extendedLocation", "2021-03-01"),
    ("virtualMachineScaleSet", "2021-03-01"),
    ("platformSubFaultDomain", "2021-10-01"),
    ("additionalCapabilities", "2021-11-01"),
    ("host", "2021-11-15"),
    ("hostGroup", "2021-11-15"),
];

/// Whether `version` serves the `compute` field `field`.
pub fn compute_has(version: &str, field: &str) -> bool {
    COMPUTE_SINCE
        .iter()
        .find(|(f, _)| f.eq_ignore_ascii_case(field))
        .is_none_or(|(_, since)| version >= *since)
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

    #[test]
    fn fields_appear_with_their_version() {
        assert!(!compute_has("2019-06-01", "userData"));
        assert!(compute_has("2021-08-01", "userData"));
        assert!(!compute_has("2019-06-01", "tagsList"));
        assert!(compute_has("2019-06-04", "tagsList"));
        assert!(compute_has("2017-04-02", "vmId"));
        assert!(compute_has("2017-04-02", "a-field-of-the-file"));
    }
}
