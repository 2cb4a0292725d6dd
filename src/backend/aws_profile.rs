//! The shared AWS credentials and config files (`~/.aws/credentials`, `~/.aws/config`),
//! read for the profile in `AWS_PROFILE` (or `default`), as the AWS tools do.

use std::collections::HashMap;
use std::path::PathBuf;

/// Settings of one profile; credentials-file values win over config-file values.
#[derive(Debug, Default)]
pub struct Profile {
    values: HashMap<String, String>,
}

impl Profile {
    /// Loads the selected profile; missing files give an empty profile.
    pub fn load() -> Self {
        let name = std::env::var("AWS_PROFILE").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string());
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let credentials = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let config = std::env::var_os("AWS_CONFIG_FILE").map(PathBuf::from).unwrap_or_else(|| home.join(".aws/config"));
        let mut values = HashMap::new();
        let config_section = if name == "default" { name.clone() } else { format!("profile {name}") };
        if let Ok(text) = std::fs::read_to_string(config) {
            values.extend(section(&text, &config_section));
        }
        if let Ok(text) = std::fs::read_to_string(credentials) {
            values.extend(section(&text, &name));
        }
        Self { values }
    }

    /// A setting of the profile.
    pub fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned().filter(|value| !value.is_empty())
    }
}

/// The `key = value` pairs of `[wanted]` in an INI text.
fn section(text: &str, wanted: &str) -> HashMap<String, String> {
    let mut current = None;
    let mut values = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        if current.as_deref() == Some(wanted) {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_wanted_section_only() {
        let text = "[default]\naws_access_key_id = A\n\n[profile clinic]\n# comment\nregion = eu-central-1\nAWS_SECRET_ACCESS_KEY=S\n";
        let clinic = super::section(text, "profile clinic");
        assert_eq!(clinic.get("region").map(String::as_str), Some("eu-central-1"));
        assert_eq!(clinic.get("aws_secret_access_key").map(String::as_str), Some("S"));
        assert!(!clinic.contains_key("aws_access_key_id"));
    }
}
