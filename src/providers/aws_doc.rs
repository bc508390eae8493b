//! The JSON documents of EC2's `iam/` tree, printed as EC2 prints them (pretty,
//! `"Key" : "value"`; aws-config's tests use that exact form): shared by the emulator
//! and the proxy's assumed roles.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

/// One set of role credentials as `iam/security-credentials/<role>` shows them.
pub struct RoleKeys<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub token: &'a str,
    pub last_updated: SystemTime,
    pub expiration: SystemTime,
}

/// `iam/security-credentials/<role>`.
pub fn credentials_json(k: &RoleKeys<'_>) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc<'a> {
        code: &'a str,
        last_updated: String,
        #[serde(rename = "Type")]
        kind: &'a str,
        access_key_id: &'a str,
        secret_access_key: &'a str,
        token: &'a str,
        expiration: String,
    }
    pretty(&Doc {
        code: "Success",
        last_updated: timestamp(k.last_updated),
        kind: "AWS-HMAC",
        access_key_id: k.access_key_id,
        secret_access_key: k.secret_access_key,
        token: k.token,
        expiration: timestamp(k.expiration),
    })
}

/// The 200 EC2 answers when it has no credentials to give: a `Code` other than
/// `Success` (`CredentialsUnavailable`, or `AssumeRoleUnauthorizedAccess` when the
/// role cannot be assumed) and a `Message` (botocore then reports no credentials;
/// aws-config an error).
pub fn failure_json(code: &str, message: &str, now: SystemTime) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc<'a> {
        code: &'a str,
        message: &'a str,
        last_updated: String,
    }
    pretty(&Doc {
        code,
        message,
        last_updated: timestamp(now),
    })
}

/// `iam/info`.
pub fn info_json(profile_arn: &str, profile_id: &str, last_updated: SystemTime) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc<'a> {
        code: &'a str,
        last_updated: String,
        instance_profile_arn: &'a str,
        instance_profile_id: &'a str,
    }
    pretty(&Doc {
        code: "Success",
        last_updated: timestamp(last_updated),
        instance_profile_arn: profile_arn,
        instance_profile_id: profile_id,
    })
}

/// JSON as EC2 prints it: two-space indents and `"Key" : value`.
pub fn pretty<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced(PrettyFormatter::new()));
    value
        .serialize(&mut ser)
        .expect("serializing to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// serde_json's pretty printer with a space before each colon.
struct Spaced<'a>(PrettyFormatter<'a>);

impl Formatter for Spaced<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b" : ")
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds): the form botocore parses
/// `Expiration` with.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (as STS writes `Expiration`) back to a time.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let time = time.split('.').next()?;
    let num = |t: &str| t.parse::<i64>().ok();
    let d: Vec<i64> = date.split('-').map(num).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(num).collect::<Option<_>>()?;
    let (&[y, m, day], &[hh, mm, ss]) = (&d[..], &t[..]) else {
        return None;
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (the inverse of [`civil_date`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01, counted in 400-year eras
/// (146097 days each) of years starting in March, so that the leap day comes last.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_whole_seconds() {
        let at = |s: u64| timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_955_199), "2000-03-01T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn timestamps_read_back() {
        for secs in [0u64, 951_782_400, 951_955_199, 1_700_000_000, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_timestamp(&timestamp(t)), Some(t), "{secs}");
        }
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20.123Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        for bad in [
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "x",
            "2023-11-14 22:13:20Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn documents_print_as_ec2_prints_them() {
        #[derive(Serialize)]
        struct D {
            a: &'static str,
            b: Option<u8>,
        }
        assert_eq!(
            pretty(&D { a: "x", b: None }),
            "{\n  \"a\" : \"x\",\n  \"b\" : null\n}"
        );
    }
}
