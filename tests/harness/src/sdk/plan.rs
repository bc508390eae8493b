//! What each container of judges must get, read from the emulator file both modes
//! serve (tests/sdk/emulator.toml), whose credentials are fixed values: a judge can tell
//! one identity's token from another's by its value alone.

use serde_json::{json, Value};

/// The file both modes serve.
pub const EMULATOR_FILE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sdk/emulator.toml");
/// The audience the judges ask ID tokens for.
pub const AUDIENCE: &str = "https://sdk-judge.imds-proxy.test/audience";
/// The scope the Azure judges ask for (the SDK sends the resource, without `/.default`).
pub const AZURE_SCOPE: &str = "https://management.azure.com/.default";
/// The two identities of the file besides the instance's own, each pinned to one
/// container; named after their AWS role, GCE account and Azure identity.
pub const PINNED: [&str; 2] = ["reader", "writer"];

/// Which set-up the judges face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `imds-proxy run --emulator FILE`: the emulator knows each caller's labels.
    Emulator,
    /// `imds-proxy run --upstream` in front of `imds-proxy emulate FILE`, which sees
    /// every caller as the host (as a real cloud would): per-container identity comes
    /// from the proxy's pinning alone.
    Proxy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Emulator => "emulator",
            Mode::Proxy => "proxy",
        }
    }
}

/// An AWS role and the credentials the file gives it.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

/// One identity of each provider, as the file defines it.
#[derive(Debug, Clone)]
pub struct Identities {
    pub gce_email: String,
    pub gce_token: String,
    pub gce_scope: String,
    /// None for the system-assigned identity.
    pub azure_client_id: Option<String>,
    pub azure_res_id: Option<String>,
    pub azure_token: String,
    pub aws: Role,
}

/// One container of judges: what it is, its labels, and the judges' plan.
pub struct Container {
    pub what: String,
    pub labels: Vec<String>,
    pub plan: Value,
    /// Whether it must obtain AWS credentials (and so an IMDSv2 session token).
    pub has_aws_role: bool,
}

/// What tests/sdk/emulator.toml serves.
#[derive(Debug, Clone)]
pub struct Instance {
    pub project_id: String,
    pub issuer: String,
    pub region: String,
    /// What an unlabelled container gets.
    pub own: Identities,
    /// The further identities, by name (see [`PINNED`]).
    pub named: Vec<(String, Identities)>,
    /// Every credential in the file.
    pub secrets: Vec<String>,
}

fn string(v: &toml::Value, k: &str) -> String {
    v.get(k)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("emulator.toml: no string {k} in {v}"))
        .to_owned()
}

fn array<'a>(v: &'a toml::Value, k: &str) -> &'a [toml::Value] {
    v.get(k)
        .and_then(|x| x.as_array())
        .unwrap_or_else(|| panic!("emulator.toml: no array {k}"))
}

fn is_default(t: &toml::Value) -> bool {
    t.get("default").and_then(|d| d.as_bool()) == Some(true)
}

fn identities(
    gce: &toml::Value,
    azure: &toml::Value,
    role: &toml::Value,
    user: bool,
) -> Identities {
    Identities {
        gce_email: string(gce, "email"),
        gce_token: string(gce, "token"),
        gce_scope: array(gce, "scopes")[0].as_str().unwrap().to_owned(),
        azure_client_id: user.then(|| string(azure, "client_id")),
        azure_res_id: user.then(|| string(azure, "msi_res_id")),
        azure_token: string(azure, "token"),
        aws: Role {
            name: string(role, "name"),
            access_key_id: string(role, "access_key_id"),
            secret_access_key: string(role, "secret_access_key"),
            session_token: string(role, "session_token"),
        },
    }
}

impl Instance {
    /// Reads the emulator file; panics if anything the tier relies on is missing.
    pub fn load() -> Self {
        let text = std::fs::read_to_string(EMULATOR_FILE).expect("read tests/sdk/emulator.toml");
        let v: toml::Value = toml::from_str(&text).expect("tests/sdk/emulator.toml parses");
        let gce = &v["gce"];
        let accounts = array(gce, "service_accounts");
        let azure = &v["azure"]["identity"];
        let user_assigned = array(azure, "user_assigned");
        let roles = array(&v["aws"], "roles");
        let own = identities(
            accounts
                .iter()
                .find(|a| is_default(a))
                .expect("a default service account"),
            &azure["system"],
            roles
                .iter()
                .find(|r| is_default(r))
                .expect("a default role"),
            false,
        );
        let named = PINNED
            .iter()
            .map(|name| {
                let role = roles
                    .iter()
                    .find(|r| string(r, "name") == *name)
                    .unwrap_or_else(|| panic!("emulator.toml: no role {name}"));
                let account = accounts
                    .iter()
                    .find(|a| string(a, "email").starts_with(&format!("{name}@")))
                    .unwrap_or_else(|| panic!("emulator.toml: no service account {name}@"));
                let ua = user_assigned
                    .iter()
                    .find(|u| string(u, "msi_res_id").ends_with(&format!("/{name}")))
                    .unwrap_or_else(|| panic!("emulator.toml: no user-assigned identity {name}"));
                (name.to_string(), identities(account, ua, role, true))
            })
            .collect();
        let secrets = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                ["token", "secret_access_key", "session_token"]
                    .contains(&k.trim())
                    .then(|| v.trim().trim_matches('"').to_owned())
            })
            .collect();
        Self {
            project_id: string(gce, "project_id"),
            issuer: string(&gce["identity"], "issuer"),
            region: string(&v["aws"]["meta_data"]["placement"], "region"),
            own,
            named,
            secrets,
        }
    }

    pub fn named(&self, name: &str) -> &Identities {
        &self
            .named
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no identity {name} in emulator.toml"))
            .1
    }

    /// The three containers that run side by side in `mode`: an unlabelled one (the
    /// instance's identities), and one pinned to each of [`PINNED`], refused the
    /// other's identities.
    ///
    /// AWS in proxy mode: an EC2 instance has one role, which is all the upstream
    /// lists, so pinning can only narrow. The first pinned container is pinned to the
    /// instance's role and gets it; the second to a role the instance does not have,
    /// and must get no credentials at all (not fall back to the instance's role).
    pub fn containers(&self, mode: Mode) -> Vec<Container> {
        let mut out = vec![Container {
            what: "unlabelled container (the instance's identities)".into(),
            labels: Vec::new(),
            plan: self.plan(&self.own, None, Some(&self.own.aws), None),
            has_aws_role: true,
        }];
        for (i, (me, other)) in [(PINNED[0], PINNED[1]), (PINNED[1], PINNED[0])]
            .into_iter()
            .enumerate()
        {
            let (mine, theirs) = (self.named(me), self.named(other));
            // (the role pinned, the role served, the role refused)
            let (pin, served, refused) = match (mode, i) {
                (Mode::Emulator, _) => (&mine.aws, Some(&mine.aws), &theirs.aws),
                (Mode::Proxy, 0) => (&self.own.aws, Some(&self.own.aws), &theirs.aws),
                (Mode::Proxy, _) => (&mine.aws, None, &self.own.aws),
            };
            let mut labels = vec![
                format!("imds-proxy.gce.service-account={}", mine.gce_email),
                format!(
                    "imds-proxy.azure.client-id={}",
                    mine.azure_client_id.as_ref().unwrap()
                ),
                format!(
                    "imds-proxy.azure.msi-res-id={}",
                    mine.azure_res_id.as_ref().unwrap()
                ),
            ];
            labels.push(format!("imds-proxy.aws.role={}", pin.name));
            out.push(Container {
                what: format!(
                    "container pinned to {me} (AWS role {}{}), refused {other}'s identities (AWS role {})",
                    pin.name,
                    if served.is_none() { ", which the instance lacks" } else { "" },
                    refused.name
                ),
                labels,
                plan: self.plan(mine, Some(theirs), served, Some(refused)),
                has_aws_role: served.is_some(),
            });
        }
        out
    }

    /// The judges' plan for a container holding `me`, refusing `other`'s GCE and Azure
    /// identities if given; AWS: `role` served (None: no credentials), `refused` 404.
    fn plan(
        &self,
        me: &Identities,
        other: Option<&Identities>,
        role: Option<&Role>,
        refused: Option<&Role>,
    ) -> Value {
        // An unlabelled container may use every user-assigned identity; a pinned one
        // only its own.
        let user_assigned: Vec<&Identities> = match other {
            None => self.named.iter().map(|(_, i)| i).collect(),
            Some(_) => vec![me],
        };
        let mut plan = vec![
            json!({"judge": "gce", "mode": "serve", "expect": {
                "project_id": self.project_id,
                "email": me.gce_email,
                "token": me.gce_token,
                "scope": me.gce_scope,
                "audience": AUDIENCE,
                "issuer": self.issuer,
            }}),
            json!({"judge": "azure", "mode": "serve", "expect": {
                "scope": AZURE_SCOPE,
                "default_token": me.azure_token,
                "user_assigned": user_assigned.iter().map(|i| json!({
                    "client_id": i.azure_client_id,
                    "resource_id": i.azure_res_id,
                    "token": i.azure_token,
                })).collect::<Vec<_>>(),
            }}),
            match role {
                Some(r) => json!({"judge": "aws", "mode": "serve", "expect": {
                    "role": r.name,
                    "access_key_id": r.access_key_id,
                    "secret_access_key": r.secret_access_key,
                    "session_token": r.session_token,
                    "region": self.region,
                }}),
                None => json!({"judge": "aws", "mode": "absent", "expect": {}}),
            },
        ];
        if let Some(o) = other {
            plan.extend([
                json!({"judge": "gce", "mode": "refuse", "expect": {
                    "email": me.gce_email, "other_email": o.gce_email,
                }}),
                json!({"judge": "azure", "mode": "refuse", "expect": {
                    "scope": AZURE_SCOPE,
                    "other": {"client_id": o.azure_client_id, "resource_id": o.azure_res_id},
                }}),
            ]);
        }
        if let Some(refused) = refused {
            plan.push(json!({"judge": "aws", "mode": "refuse", "expect": {
                "other_role": refused.name,
                "listing": role.map(|r| vec![r.name.clone()]).unwrap_or_default(),
            }}));
        }
        Value::Array(plan)
    }
}
