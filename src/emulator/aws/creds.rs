//! Role credentials, and the JSON documents of `iam/` for them (printed by
//! [`aws_doc`]).
//!
//! Each role's credentials are kept until half their lifetime has passed, then
//! replaced: every answer's `Expiration` is at least half a lifetime ahead, beyond
//! every SDK's refresh window (botocore 15/10 min, the Java SDK 15 min), and new
//! credentials appear long before the old ones expire (EC2: at least 5 min before).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use rand::Rng;

use super::config::Role;
use crate::providers::aws_doc;

/// One set of credentials as handed out.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    pub issued_at: SystemTime,
    pub expiration: SystemTime,
}

/// Never shows the secret parts.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_key_id", &self.access_key_id)
            .field("issued_at", &self.issued_at)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// Credentials per role name, with the role settings they were issued under (new
/// settings in the file mean new credentials at once).
#[derive(Debug, Default)]
pub struct Credentials {
    issued: Mutex<HashMap<String, (Role, Issued)>>,
}

impl Credentials {
    /// The credentials for `role` at `now`; an error says why static keys could not
    /// be read (an unset variable).
    pub fn get(
        &self,
        role: &Role,
        now: SystemTime,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Issued, String> {
        let mut issued = self.issued.lock().expect("credentials lock");
        if let Some((settings, i)) = issued.get(&role.name) {
            let half = i.issued_at + role.credentials_lifetime / 2;
            if settings == role && i.issued_at <= now && now < half {
                return Ok(i.clone());
            }
        }
        let new = issue(role, now, env)?;
        issued.insert(role.name.clone(), (role.clone(), new.clone()));
        Ok(new)
    }
}

fn issue(
    role: &Role,
    now: SystemTime,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Issued, String> {
    let (access_key_id, secret_access_key, token) = match &role.keys {
        Some(k) => (
            k.access_key_id.resolve(env)?,
            k.secret_access_key.resolve(env)?,
            match &k.session_token {
                Some(t) => t.resolve(env)?,
                None => String::new(),
            },
        ),
        None => generated(),
    };
    Ok(Issued {
        access_key_id,
        secret_access_key,
        token,
        issued_at: now,
        expiration: now + role.credentials_lifetime,
    })
}

/// Temporary credentials of the shapes STS issues: `ASIA` + 16 upper-case
/// alphanumerics, a 40-character secret, a long base64 session token.
fn generated() -> (String, String, String) {
    use base64::Engine;
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::thread_rng();
    let mut pick = |set: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| set[rng.gen_range(0..set.len())] as char)
            .collect()
    };
    let access = format!("ASIA{}", pick(UPPER, 16));
    let secret = pick(SECRET, 40);
    let mut raw = [0u8; 600];
    rng.fill(&mut raw[..]);
    let token = base64::engine::general_purpose::STANDARD.encode(raw);
    (access, secret, token)
}

/// `iam/security-credentials/<role>`.
pub fn credentials_json(i: &Issued) -> String {
    aws_doc::credentials_json(&aws_doc::RoleKeys {
        access_key_id: &i.access_key_id,
        secret_access_key: &i.secret_access_key,
        token: &i.token,
        last_updated: i.issued_at,
        expiration: i.expiration,
    })
}

/// The 200 EC2 answers when it has no credentials to give.
pub fn failure_json(message: &str, now: SystemTime) -> String {
    aws_doc::failure_json("CredentialsUnavailable", message, now)
}

/// `iam/info`.
pub fn info_json(role: &Role, last_updated: SystemTime) -> String {
    aws_doc::info_json(
        &role.instance_profile_arn,
        &role.instance_profile_id,
        last_updated,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_have_sts_shapes() {
        let (a, s, t) = generated();
        assert!(a.starts_with("ASIA") && a.len() == 20, "{a}");
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        assert_eq!(s.len(), 40);
        assert!(t.len() >= 400);
        let (a2, s2, t2) = generated();
        assert!(a != a2 && s != s2 && t != t2);
    }
}
