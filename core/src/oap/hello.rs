//! HELLO payloads (spec section 2). Field order is the wire order of the test vectors.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Another overlay node: receives relayed gossip and relays in turn.
    Peer,
    /// An application endpoint: publishes and receives matching messages, never relays.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Client => "client",
        }
    }
}

/// The dialer's HELLO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub versions: Vec<u16>,
    /// May be absent or empty (a client need not name itself); at most 128 bytes.
    #[serde(default)]
    pub node: String,
    pub role: Role,
    #[serde(default = "default_max_frame")]
    pub max_frame: u32,
    /// Empty or absent means every topic.
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pq: Option<String>,
    /// The dialer accepts COMP frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub comp: bool,
    /// Additions the dialer speaks beyond spec sections 1–6 (`"tree"`); absent = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// The broadcast tree (TREE frames, app_proto 3): see `docs/OAP1.md`.
pub const FEATURE_TREE: &str = "tree";

fn default_max_frame() -> u32 {
    super::DEFAULT_MAX_FRAME
}

/// The acceptor's 200 answer. Every field is written; on reading, a missing `node`,
/// `max_frame` or `chunk` takes the spec's default, so a terse peer still interoperates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    pub version: u16,
    #[serde(default)]
    pub node: String,
    #[serde(default = "default_max_frame")]
    pub max_frame: u32,
    #[serde(default = "default_chunk")]
    pub chunk: u32,
    /// The additions both sides will use: those of the HELLO the acceptor also speaks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

fn default_chunk() -> u32 {
    64 << 10
}

/// The acceptor's error answer; the connection closes after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Hello {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl HelloOk {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl HelloError {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
