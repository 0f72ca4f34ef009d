//! The parts of the OCI image config that decide how a container runs
//! (image-spec `config.json`, object `config`): read by the image service from the config
//! blob, used by the spec generator for defaults and by ImageStatus for the user.

use serde::{Deserialize, Serialize};

/// `config` of an OCI (or Docker) image config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    #[serde(rename = "User")]
    pub user: String,
    #[serde(rename = "Env", deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: String,
    #[serde(rename = "StopSignal")]
    pub stop_signal: String,
    #[serde(rename = "Volumes", deserialize_with = "null_as_default")]
    pub volumes: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Labels", deserialize_with = "null_as_default")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Docker writes `null` for empty lists and maps.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The whole image config blob, as far as we read it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ImageConfigBlob {
    pub config: ImageConfig,
    pub rootfs: RootFs,
    pub architecture: String,
    pub os: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_nulls_read_as_empty() {
        let b: ImageConfigBlob = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"User":"1002","Env":null,
                "Cmd":["sh"],"Entrypoint":null,"Volumes":null,"StopSignal":"SIGQUIT"},
                "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#,
        )
        .unwrap();
        assert_eq!(b.config.user, "1002");
        assert!(b.config.env.is_empty() && b.config.entrypoint.is_empty());
        assert_eq!(b.config.cmd, vec!["sh"]);
        assert_eq!(b.config.stop_signal, "SIGQUIT");
        assert_eq!(b.rootfs.diff_ids, vec!["sha256:aa"]);
    }
}
