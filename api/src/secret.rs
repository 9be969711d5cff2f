//! The deployment's secret: the key that idempotency records are hashed and sealed with, kept
//! outside the database so that a reader of the records (a dump, a backup, a SQL session) can
//! neither test guesses of a stored request's body (which may hold a password) nor open a stored
//! answer.
//!
//! It is `MOVIESTORE_SECRET` when set (every `serve` process of a deployment must then be given
//! the same one). Unset, it is the file `secret` in `MOVIESTORE_DATA_DIR`, created on first start
//! with 32 random bytes and readable by its owner only; processes that share the data folder share
//! it.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::RngCore;
use ring::hmac;

pub use crate::config::MIN_SECRET_CHARS;

/// The file name under the data folder.
const FILE: &str = "secret";

/// Keys derived from the deployment's secret, one per use.
pub struct Secrets {
    body: hmac::Key,
    seal: hmac::Key,
}

impl Secrets {
    /// Keys derived from `secret` (any length; callers check the length they require).
    pub fn from_secret(secret: &[u8]) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive =
            |purpose: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&master, purpose).as_ref());
        Self {
            body: derive(b"moviestore idempotency body v2"),
            seal: derive(b"moviestore idempotency seal v2"),
        }
    }

    /// The secret `MOVIESTORE_SECRET` gives, or else the data folder's file (created when missing).
    pub fn resolve(given: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        match given {
            Some(secret) => Ok(Self::from_secret(secret.as_bytes())),
            None => Ok(Self::from_secret(&from_file(data_dir)?)),
        }
    }

    /// A keyed digest of a request body: equal bodies match, and nobody without the secret can
    /// compute one to test a guess.
    pub fn body_digest(&self, body: &[u8]) -> Vec<u8> {
        hmac::sign(&self.body, body).as_ref().to_vec()
    }

    /// The 256-bit key a stored answer is sealed with, from every part of the request (each
    /// length-prefixed, the body last).
    pub fn seal_key(&self, parts: &[&[u8]], body: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.seal);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        context.update(body);
        let mut key = [0u8; 32];
        key.copy_from_slice(context.sign().as_ref());
        key
    }
}

/// Reads `data_dir/secret`, or creates it: written aside and linked into place, so that two
/// processes starting at once agree on one secret.
fn from_file(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(FILE);
    let read = |path: &Path| -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex_decode(text.trim())
                    .filter(|b| b.len() >= 32)
                    .with_context(|| format!("{} does not hold 64 hexadecimal digits", path.display()))?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    if let Some(secret) = read(&path)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let aside = data_dir.join(format!(".{FILE}.{}", uuid::Uuid::now_v7().simple()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&aside).with_context(|| format!("creating {}", aside.display()))?;
        file.write_all(hex_encode(&secret).as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&aside, &path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the deployment secret (set MOVIESTORE_SECRET to share one between hosts)");
            Ok(secret.to_vec())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.with_context(|| format!("{} vanished", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("moviestore-secret-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_file_is_created_once_owner_only_and_read_back_the_same() {
        let dir = scratch();
        let first = from_file(&dir).unwrap();
        let second = from_file(&dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn processes_starting_at_once_agree_on_one_secret() {
        let dir = scratch();
        let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| from_file(&dir).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]), "one secret for all");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_secret() {
        let dir = scratch();
        std::fs::write(dir.join(FILE), "not hex").unwrap();
        assert!(from_file(&dir).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn digests_depend_on_the_secret_and_are_not_the_plain_sha256() {
        let a = Secrets::from_secret(b"one secret of at least thirty-two chars");
        let b = Secrets::from_secret(b"another secret of at least thirty-two c");
        let body = b"{\"password\":\"hunter22\"}";
        assert_eq!(a.body_digest(body), a.body_digest(body));
        assert_ne!(a.body_digest(body), b.body_digest(body));
        use sha2::Digest;
        assert_ne!(a.body_digest(body), sha2::Sha256::digest(body).to_vec());
        assert_ne!(a.seal_key(&[b"k"], body), b.seal_key(&[b"k"], body));
        assert_ne!(a.seal_key(&[b"k", b"1"], body), a.seal_key(&[b"k1"], body), "parts are delimited");
    }
}
