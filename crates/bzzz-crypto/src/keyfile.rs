//! On-disk format of the node identity key (`<data-dir>/node_key.json`).
//!
//! ```json
//! {"format": "bzzz-node-key", "v": 1, "ed25519_seed": "<64 hex chars>"}
//! ```
//!
//! Written with mode 0600 via a temporary file and an atomic rename, so a
//! crash never leaves a half-written key. Loading refuses unknown versions,
//! malformed hex, and files readable by group or others (the operator is told
//! how to fix the permissions). The seed is the node's own identity, like an
//! SSH host key: it must exist unattended at boot, so it is protected by file
//! permissions, not by a passphrase (see docs/threat-model.md).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::{CryptoError, NodeKey, SecretBytes32};

pub const FORMAT: &str = "bzzz-node-key";
pub const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    v: u32,
    ed25519_seed: String,
}

impl Drop for OnDisk {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.ed25519_seed);
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> CryptoError {
    CryptoError::KeyFile {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Loads the key at `path`, or creates (and persists) a new one if the file
/// does not exist. Returns the key and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(NodeKey, bool), CryptoError> {
    match fs::metadata(path) {
        Ok(_) => Ok((load(path)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate()?;
            save(path, &key)?;
            Ok((key, true))
        }
        Err(e) => Err(io(path, e)),
    }
}

pub fn load(path: &Path) -> Result<NodeKey, CryptoError> {
    let meta = fs::metadata(path).map_err(|e| io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(
            path,
            format!(
                "permissions {mode:o} let other users read the node key; run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    if meta.len() > 4096 {
        return Err(bad(path, "file is too large to be a node key"));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| io(path, e))?);
    let disk: OnDisk =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("not a node key file: {e}")))?;
    if disk.format != FORMAT {
        return Err(bad(
            path,
            format!("format is {:?}, expected {FORMAT:?}", disk.format),
        ));
    }
    if disk.v != VERSION {
        return Err(bad(
            path,
            format!(
                "version {} is not supported by this bzzz (knows {VERSION})",
                disk.v
            ),
        ));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&disk.ed25519_seed, seed.as_mut())
        .map_err(|_| bad(path, "ed25519_seed must be 64 hex characters"))?;
    Ok(NodeKey::from_seed(&SecretBytes32::from_bytes(*seed)))
}

pub fn save(path: &Path, key: &NodeKey) -> Result<(), CryptoError> {
    let disk = OnDisk {
        format: FORMAT.into(),
        v: VERSION,
        ed25519_seed: hex::encode(key.seed().expose()),
    };
    let text = Zeroizing::new(
        serde_json::to_string(&disk).map_err(|e| bad(path, format!("encode: {e}")))?,
    );
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads_the_same_key_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("sub/node_key.json");
        let (k1, created) = load_or_create(&p).expect("create");
        assert!(created);
        let (k2, created) = load_or_create(&p).expect("load");
        assert!(!created);
        assert_eq!(k1.public(), k2.public());
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_world_readable_corrupt_and_future_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("k.json");
        load_or_create(&p).expect("create");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");

        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(
            &p,
            r#"{"format":"bzzz-node-key","v":2,"ed25519_seed":"00"}"#,
        )
        .expect("w");
        assert!(load(&p).unwrap_err().to_string().contains("version 2"));

        fs::write(
            &p,
            r#"{"format":"bzzz-node-key","v":1,"ed25519_seed":"zz"}"#,
        )
        .expect("w");
        assert!(load(&p).unwrap_err().to_string().contains("64 hex"));

        fs::write(&p, "garbage").expect("w");
        assert!(
            load(&p)
                .unwrap_err()
                .to_string()
                .contains("not a node key file")
        );
    }
}
