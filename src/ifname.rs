//! Interface names as the kernel allows them, and the patterns that pick container
//! bridges by name. Configuration, the firewall plan and the link code all name
//! interfaces; a leaf, it imports nothing of ours.

use std::fmt;

/// Kernel limit for interface names, including the trailing NUL.
pub const IFNAMSIZ: usize = 16;

/// Which interfaces count as container bridges: an exact name (`docker0`) or a name
/// prefix written with a trailing `*` (`br-*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BridgePattern {
    /// Matches one interface name.
    Exact(String),
    /// Matches every interface whose name starts with this prefix.
    Prefix(String),
}

impl BridgePattern {
    /// Parses `docker0` or `br-*`; rejects names the kernel could never have.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, prefix) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        if name.is_empty() {
            return Err(format!("{text:?}: empty interface name"));
        }
        if name.len() >= IFNAMSIZ {
            return Err(format!(
                "{text:?}: interface names have at most {} bytes",
                IFNAMSIZ - 1
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_graphic()) || matches!(c, '/' | '*' | '"' | '\\'))
        {
            return Err(format!(
                "{text:?}: character {c:?} is not allowed in an interface name"
            ));
        }
        Ok(if prefix {
            Self::Prefix(name.into())
        } else {
            Self::Exact(name.into())
        })
    }

    /// Whether an interface with this name is a container bridge.
    pub fn matches(&self, ifname: &str) -> bool {
        match self {
            Self::Exact(n) => n == ifname,
            Self::Prefix(p) => ifname.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for BridgePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "{n}"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}
