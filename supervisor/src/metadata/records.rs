//! The records stored in the metadata tables. Plain data; the services map them to and from
//! the wire messages.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// A point in time with nanosecond precision, as protobuf Timestamps carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Time {
    pub seconds: i64,
    pub nanos: i32,
}

impl Time {
    pub fn now() -> Time {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default)]
    pub labels: Labels,
    pub created_at: Time,
}

/// An OCI descriptor (`containerd.types.Descriptor`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    #[serde(default)]
    pub labels: Labels,
    pub target: Descriptor,
    pub created_at: Time,
    pub updated_at: Time,
}

/// An `Any`: type URL and bytes, passed through untouched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnyValue {
    pub type_url: String,
    #[serde(with = "bytes_hex")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    #[serde(default)]
    pub options: Option<AnyValue>,
}

/// A container (`containers <ns>\0<id>`); its rules are in `containers.rs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub image: String,
    pub runtime: Runtime,
    #[serde(default)]
    pub spec: Option<AnyValue>,
    #[serde(default)]
    pub snapshotter: String,
    #[serde(default)]
    pub snapshot_key: String,
    #[serde(default)]
    pub extensions: BTreeMap<String, AnyValue>,
    pub created_at: Time,
    pub updated_at: Time,
}

/// A blob's visibility and labels in one namespace; the bytes live in the shared store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blob {
    pub size: i64,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: Time,
    pub updated_at: Time,
}

/// A namespaced snapshot key and the backend key it maps to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The key in the backend snapshotter (unique across namespaces).
    pub backend_key: String,
    /// The parent's namespaced key, empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: Time,
    pub updated_at: Time,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    #[serde(default)]
    pub labels: Labels,
    pub created_at: Time,
}

mod bytes_hex {
    //! Bytes as a hex string inside the JSON record (compact enough for specs and options).
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
