//! Where a backend's credential (token, secret key, PIN, client secret) comes from.

use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::KmsError;

/// A credential given in the configuration: from a file (preferred), an environment variable,
/// or inline. In TOML: `secret = { file = "secrets/token" }`, `secret = { env = "VAULT_TOKEN" }`
/// or `secret = "inline value"`. Surrounding whitespace is trimmed; the value is read when the
/// backend is built and kept only in wiped-on-drop memory.
#[derive(Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// Read from this file (relative paths: relative to the configuration file).
    File {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Read from this environment variable.
    Env {
        /// The variable's name.
        env: String,
    },
    /// The value itself (discouraged outside tests: it sits in the configuration file).
    Inline(Zeroizing<String>),
}

impl core::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::File { file } => f.debug_struct("File").field("file", file).finish(),
            Self::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

impl SecretSource {
    /// The credential, read now. `base_dir` resolves relative file paths.
    pub fn load(&self, base_dir: &Path) -> Result<Zeroizing<String>, KmsError> {
        let value = match self {
            Self::File { file } => {
                let path = base_dir.join(file);
                Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                    KmsError::ConfigurationInvalid(format!(
                        "cannot read the credential file {}: {e}",
                        path.display()
                    ))
                })?)
            }
            Self::Env { env } => Zeroizing::new(std::env::var(env).map_err(|_| {
                KmsError::ConfigurationInvalid(format!(
                    "the environment variable {env} holding a credential is not set"
                ))
            })?),
            Self::Inline(value) => value.clone(),
        };
        let trimmed = Zeroizing::new(value.trim().to_owned());
        if trimmed.is_empty() {
            return Err(KmsError::ConfigurationInvalid("a credential is empty".into()));
        }
        Ok(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        secret: SecretSource,
    }

    #[test]
    fn reads_each_form_and_never_prints_inline_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
        let file: Holder = toml::from_str(r#"secret = { file = "token" }"#).unwrap();
        assert_eq!(file.secret.load(dir.path()).unwrap().as_str(), "from-file");

        let inline: Holder = toml::from_str(r#"secret = "hunter2-hunter2""#).unwrap();
        assert_eq!(inline.secret.load(dir.path()).unwrap().as_str(), "hunter2-hunter2");
        assert!(!format!("{inline:?}").contains("hunter2"));

        let env: Holder =
            toml::from_str(r#"secret = { env = "KEYHOLD_TEST_UNSET_VARIABLE" }"#).unwrap();
        let err = env.secret.load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("KEYHOLD_TEST_UNSET_VARIABLE"), "{err}");

        let missing: Holder = toml::from_str(r#"secret = { file = "nope" }"#).unwrap();
        assert!(matches!(missing.secret.load(dir.path()), Err(KmsError::ConfigurationInvalid(_))));
        assert!(toml::from_str::<Holder>(r#"secret = { path = "x" }"#).is_err());
    }
}
