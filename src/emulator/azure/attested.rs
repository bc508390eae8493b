//! The content of Azure's attested document: what IMDS signs to vouch for the VM
//! (its subscription, its image's plan and SKU, its vmId), the caller's nonce, and
//! the validity window, in IMDS's own shapes. Pure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use super::config::AzureConfig;

/// How long an attested document holds (IMDS's are valid for six hours).
const VALIDITY: Duration = Duration::from_secs(6 * 3600);

/// The signed content for `nonce` at `now`. Without a nonce IMDS puts a timestamp
/// (`YYYYMMDD-HHMMSS`) in its place.
pub fn content(cfg: &AzureConfig, nonce: Option<&str>, now: SystemTime) -> Json {
    let compute = &cfg.instance["compute"];
    let field = |k: &str| compute[k].as_str().unwrap_or_default().to_owned();
    let plan = |k: &str| compute["plan"][k].as_str().unwrap_or_default().to_owned();
    let nonce = nonce.map_or_else(|| stamp(now), str::to_owned);
    json!({
        "licenseType": field("licenseType"),
        "nonce": nonce,
        "plan": {"name": plan("name"), "product": plan("product"), "publisher": plan("publisher")},
        "sku": field("sku"),
        "subscriptionId": field("subscriptionId"),
        "timeStamp": {"createdOn": date(now), "expiresOn": date(now + VALIDITY)},
        "vmId": field("vmId"),
    })
}

/// `MM/DD/YY HH:MM:SS -0000`, as the document's timestamps are written.
fn date(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{mo:02}/{d:02}/{:02} {h:02}:{mi:02}:{s:02} -0000", y % 100)
}

/// `YYYYMMDD-HHMMSS`.
fn stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// UTC calendar fields of `t` (days to civil date: Howard Hinnant's algorithm).
fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_as_imds_writes_them() {
        let t = UNIX_EPOCH + Duration::from_secs(1_543_386_977); // 2018-11-28 06:36:17
        assert_eq!(date(t), "11/28/18 06:36:17 -0000");
        assert_eq!(stamp(t), "20181128-063617");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(stamp(leap), "20000229-000000");
    }
}
