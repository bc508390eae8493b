//! EC2's dated metadata versions: `GET /` lists them, and a dated path answers with what
//! that version had. Clients pick a version by asking for a path under it (cloud-init
//! probes `2021-03-23/meta-data/instance-id`, then older ones) and read only the
//! categories it documents, so a dated answer must not show what came later. Pure.
//!
//! The release versions of each category are those of the EC2 user guide's table of
//! instance metadata categories; a category not in the table (one the file adds) is
//! served under every version.

/// Every version `GET /` lists, oldest first (then `latest`).
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
];

/// Paths below `meta-data/` (or `dynamic/`, prefixed so) and the version that brought
/// them; a path is served under a version at or after its own.
const SINCE: &[(&str, &str)] = &[
    ("ami-launch-index", "2007-01-19"),
    ("local-hostname", "2007-01-19"),
    ("public-hostname", "2007-01-19"),
    ("public-ipv4", "2007-01-19"),
    ("product-codes", "2007-03-01"),
    ("instance-type", "2007-08-29"),
    ("ancestor-ami-ids", "2007-10-10"),
    ("ramdisk-id", "2007-10-10"),
    ("block-device-mapping", "2007-12-15"),
    ("kernel-id", "2008-02-01"),
    ("placement", "2008-02-01"),
    ("instance-action", "2008-09-01"),
    ("mac", "2011-01-01"),
    ("network", "2011-01-01"),
    ("metrics", "2011-05-01"),
    ("iam", "2012-01-12"),
    ("services", "2014-02-25"),
    ("spot/termination-time", "2014-11-05"),
    ("services/partition", "2015-10-20"),
    ("spot/instance-action", "2016-11-15"),
    ("identity-credentials", "2018-05-23"),
    ("elastic-inference", "2018-11-29"),
    ("events", "2018-08-17"),
    ("placement/availability-zone-id", "2019-10-01"),
    ("instance-life-cycle", "2019-10-01"),
    ("placement/group-name", "2020-08-24"),
    ("placement/host-id", "2020-08-24"),
    ("placement/partition-number", "2020-08-24"),
    ("placement/region", "2020-08-24"),
    ("events/recommendations", "2020-10-27"),
    ("ipv6", "2021-01-03"),
    ("tags", "2021-03-23"),
    ("autoscaling", "2021-07-15"),
    ("dynamic", "2009-04-04"),
    ("dynamic/instance-identity/rsa2048", "2009-04-04"),
];

/// Whether `version` (`latest` or one of [`VERSIONS`]) is served at all.
pub fn known(version: &str) -> bool {
    version == "latest" || VERSIONS.contains(&version)
}

/// Whether `path` (segments below `meta-data/`, or `["dynamic", ...]`) exists under
/// `version`: every prefix of it must be as old as the version or older.
pub fn has(version: &str, path: &[&str]) -> bool {
    if version == "latest" {
        return true;
    }
    (1..=path.len()).all(|n| {
        let prefix = path[..n].join("/");
        SINCE
            .iter()
            .find(|(p, _)| *p == prefix)
            .is_none_or(|(_, since)| newer_or_same(version, since))
    })
}

/// `a >= b` for two versions: `1.0` is the oldest; dates compare as text.
fn newer_or_same(a: &str, b: &str) -> bool {
    match (a == "1.0", b == "1.0") {
        (_, true) => true,
        (true, false) => false,
        _ => a >= b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_and_known() {
        assert!(VERSIONS.windows(2).all(|w| !newer_or_same(w[0], w[1])));
        assert!(known("latest") && known("2009-04-04") && known("1.0"));
        assert!(!known("2010-01-01") && !known("2.0"));
    }

    #[test]
    fn a_dated_version_has_only_what_it_brought() {
        assert!(has("1.0", &["ami-id"]));
        assert!(!has("1.0", &["instance-type"]));
        assert!(!has("2009-04-04", &["iam", "info"]));
        assert!(has("2012-01-12", &["iam", "info"]));
        assert!(has("2016-09-02", &["placement", "availability-zone"]));
        assert!(!has("2016-09-02", &["placement", "region"]));
        assert!(has("2021-03-23", &["placement", "region"]));
        assert!(!has("2018-09-24", &["tags", "instance"]));
        assert!(has("latest", &["tags", "instance"]));
        assert!(!has("2008-09-01", &["dynamic"]));
        assert!(has(
            "2009-04-04",
            &["dynamic", "instance-identity", "document"]
        ));
        assert!(has("2009-04-04", &["a-key-of-the-file"]));
    }
}
