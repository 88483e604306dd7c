//! `DATA_DIR/aws-credentials`: the admin key pair in the AWS shared-credentials format (profile
//! `[nimbus]`, mode 0600), so `AWS_SHARED_CREDENTIALS_FILE=… AWS_PROFILE=nimbus` points any SDK
//! or the `aws` CLI at nimbus. Created once; later starts read it back, so the key is stable
//! across restarts.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The profile name in the file.
pub const PROFILE: &str = "nimbus";
/// The file's name under the data dir.
pub const FILE_NAME: &str = "aws-credentials";

/// The admin key pair: read from `path`, or created and written there.
pub fn load_or_create(path: &Path) -> std::io::Result<(String, String)> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Some(pair) = parse_profile(&text, PROFILE) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(pair);
        }
        tracing::warn!(path = %path.display(), "no [nimbus] key pair in the AWS credentials file; writing a new one");
    }
    let (id, secret) = crate::keys::generate("NIMB");
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        write!(f, "[{PROFILE}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok((id, secret))
}

/// The key pair of `[profile]` in shared-credentials text.
pub fn parse_profile(text: &str, profile: &str) -> Option<(String, String)> {
    let mut in_profile = false;
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if !in_profile {
            continue;
        }
        match k.trim() {
            "aws_access_key_id" => id = Some(v.trim().to_owned()),
            "aws_secret_access_key" => secret = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    Some((id?, secret?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let first = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), first);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_profile(&text, "nimbus"), Some(first));
        assert_eq!(parse_profile("[other]\naws_access_key_id = a\naws_secret_access_key = b\n", "nimbus"), None);
    }
}
