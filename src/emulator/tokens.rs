//! Access tokens the emulator hands out, from where the config file says: a value in the
//! file, an environment variable, a command run on demand (`gcloud auth
//! print-access-token`), or generated. Each token is kept until half its lifetime has
//! passed, so every answer has at least half a lifetime left — more than any SDK's
//! refresh threshold — and a new one is fetched well before expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Longest a token command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token a command may print.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where one identity's tokens come from. In the file:
/// `token = "literal"`, `token = { env = "GOOGLE_ACCESS_TOKEN" }`,
/// `token = { command = ["gcloud", "auth", "print-access-token"] }`; absent: generated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenSource {
    Value(String),
    Env {
        env: String,
    },
    Command {
        command: Vec<String>,
    },
    /// Random opaque tokens, a new one per key and lifetime (never in the file).
    #[serde(skip)]
    Generated,
}

impl TokenSource {
    /// What is wrong with this source, for the config error list.
    pub fn problem(&self) -> Option<String> {
        match self {
            TokenSource::Value(v) if v.is_empty() => Some("token is empty".into()),
            TokenSource::Value(v) if !v.chars().all(|c| c.is_ascii_graphic()) => {
                Some("token may hold only printable ASCII without spaces".into())
            }
            TokenSource::Env { env } if env.is_empty() => Some("token.env is empty".into()),
            TokenSource::Command { command } if command.is_empty() => {
                Some("token.command is empty".into())
            }
            _ => None,
        }
    }
}

/// One token as handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub value: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl Issued {
    /// Whole seconds left at `now` (0 once expired).
    pub fn expires_in(&self, now: SystemTime) -> u64 {
        self.expires_at
            .duration_since(now)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Why no token could be had. Never carries the token or the command's output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("token command {program:?} could not be started: {reason}")]
    Spawn { program: String, reason: String },
    #[error("token command {program:?} did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout { program: String },
    #[error("token command {program:?} failed ({status})")]
    Failed { program: String, status: String },
    #[error("token command {program:?} printed no usable token")]
    Unusable { program: String },
}

/// Tokens by key (provider, identity, scope or resource), each kept until half its
/// lifetime has passed. Concurrent first requests for one key may both fetch; the last
/// one stays (fetches are rare: once per half lifetime).
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: std::sync::Mutex<HashMap<String, Issued>>,
    /// Command outputs are shared by every key with the same command.
    commands: tokio::sync::Mutex<HashMap<Vec<String>, Issued>>,
}

impl TokenCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The token for `key` at `now`, fetching a new one when the cached one has less
    /// than half of `lifetime` left (or the source changed).
    pub async fn get(
        &self,
        key: &str,
        source: &TokenSource,
        lifetime: Duration,
        now: SystemTime,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Issued, TokenError> {
        let fresh = |t: &Issued| t.expires_at >= now + lifetime / 2 && t.issued_at <= now;
        let cache_key = format!("{key}\u{0}{source:?}");
        if let Some(t) = self
            .tokens
            .lock()
            .expect("token cache lock")
            .get(&cache_key)
        {
            if fresh(t) {
                return Ok(t.clone());
            }
        }
        let value = match source {
            TokenSource::Value(v) => v.clone(),
            TokenSource::Env { env: name } => env(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| TokenError::EnvUnset(name.clone()))?,
            TokenSource::Generated => generate(),
            TokenSource::Command { command } => {
                let mut cmds = self.commands.lock().await;
                match cmds.get(command) {
                    Some(t) if fresh(t) => t.value.clone(),
                    _ => {
                        let v = run_command(command).await?;
                        cmds.insert(
                            command.clone(),
                            Issued {
                                value: v.clone(),
                                issued_at: now,
                                expires_at: now + lifetime,
                            },
                        );
                        v
                    }
                }
            }
        };
        let issued = Issued {
            value,
            issued_at: now,
            expires_at: now + lifetime,
        };
        self.tokens
            .lock()
            .expect("token cache lock")
            .insert(cache_key, issued.clone());
        Ok(issued)
    }

    /// Forgets every token (the config changed: a static value may be new).
    pub fn clear(&self) {
        self.tokens.lock().expect("token cache lock").clear();
    }
}

/// 43 URL-safe characters of randomness.
pub fn generate() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn run_command(command: &[String]) -> Result<String, TokenError> {
    let program = command[0].clone();
    let child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TokenError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| TokenError::Timeout {
            program: program.clone(),
        })?
        .map_err(|e| TokenError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TokenError::Failed {
            program,
            status: out.status.to_string(),
        });
    }
    let text = String::from_utf8(out.stdout).map_err(|_| TokenError::Unusable {
        program: program.clone(),
    })?;
    let token = text.trim();
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(TokenError::Unusable { program });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[tokio::test]
    async fn a_token_is_reused_until_half_its_life_then_replaced() {
        let cache = TokenCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let life = Duration::from_secs(3600);
        let src = TokenSource::Generated;
        let a = cache.get("k", &src, life, t0, &no_env).await.unwrap();
        let b = cache
            .get("k", &src, life, t0 + Duration::from_secs(1799), &no_env)
            .await
            .unwrap();
        assert_eq!(a, b);
        assert!(b.expires_in(t0 + Duration::from_secs(1799)) >= 1800);
        let c = cache
            .get("k", &src, life, t0 + Duration::from_secs(1801), &no_env)
            .await
            .unwrap();
        assert_ne!(a.value, c.value);
        assert_eq!(c.expires_in(t0 + Duration::from_secs(1801)), 3600);
        let other = cache.get("k2", &src, life, t0, &no_env).await.unwrap();
        assert_ne!(other.value, a.value, "keys never share a generated token");
    }

    #[tokio::test]
    async fn env_and_command_sources() {
        let cache = TokenCache::default();
        let now = SystemTime::now();
        let life = Duration::from_secs(60);
        let env = |k: &str| (k == "TOK").then(|| " abc \n".to_string());
        let t = cache
            .get(
                "k",
                &TokenSource::Env { env: "TOK".into() },
                life,
                now,
                &env,
            )
            .await
            .unwrap();
        assert_eq!(t.value, "abc");
        assert_eq!(
            cache
                .get(
                    "k",
                    &TokenSource::Env { env: "NOPE".into() },
                    life,
                    now,
                    &env
                )
                .await,
            Err(TokenError::EnvUnset("NOPE".into()))
        );
        let cmd = |c: &[&str]| TokenSource::Command {
            command: c.iter().map(|s| s.to_string()).collect(),
        };
        let t = cache
            .get("k", &cmd(&["echo", "ya29.x"]), life, now, &no_env)
            .await
            .unwrap();
        assert_eq!(t.value, "ya29.x");
        assert!(matches!(
            cache.get("k", &cmd(&["false"]), life, now, &no_env).await,
            Err(TokenError::Failed { .. })
        ));
        assert!(matches!(
            cache
                .get("k", &cmd(&["/nonexistent/x"]), life, now, &no_env)
                .await,
            Err(TokenError::Spawn { .. })
        ));
        assert!(matches!(
            cache.get("k", &cmd(&["true"]), life, now, &no_env).await,
            Err(TokenError::Unusable { .. })
        ));
    }

    #[test]
    fn file_forms_parse() {
        #[derive(Deserialize)]
        struct T {
            token: TokenSource,
        }
        let p = |s: &str| toml::from_str::<T>(s).map(|t| t.token);
        assert_eq!(p("token = \"v\"").unwrap(), TokenSource::Value("v".into()));
        assert_eq!(
            p("token = { env = \"E\" }").unwrap(),
            TokenSource::Env { env: "E".into() }
        );
        assert_eq!(
            p("token = { command = [\"a\", \"b\"] }").unwrap(),
            TokenSource::Command {
                command: vec!["a".into(), "b".into()]
            }
        );
        assert!(p("token = { other = 1 }").is_err());
    }
}
