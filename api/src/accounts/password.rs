//! Argon2id hashing, run on the blocking pool so it never stalls the async workers.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, OnceLock};

use crate::config::Argon2Params;

/// The result of a verification.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    /// The password matches.
    pub valid: bool,
    /// The stored hash used other parameters than the configured ones: rehash it.
    pub outdated: bool,
}

/// Hashes and verifies passwords with the configured argon2id parameters.
#[derive(Clone)]
pub struct Passwords {
    params: Argon2Params,
    dummy: Arc<OnceLock<String>>,
}

fn hasher(params: Argon2Params) -> Argon2<'static> {
    let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
        .expect("argon2 parameters are validated with the configuration");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_now(params: Argon2Params, password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt)
        .expect("the operating system's random source failed");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    hasher(params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hashing with valid parameters cannot fail")
        .to_string()
}

impl Passwords {
    /// A hasher with these parameters.
    pub fn new(params: Argon2Params) -> Self {
        Self { params, dummy: Arc::new(OnceLock::new()) }
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: SecretString) -> Result<String, sqlx::Error> {
        let params = self.params;
        spawn_blocking(move || hash_now(params, password.expose_secret())).await
    }

    /// Verifies a password against a stored PHC string. With no stored hash (unknown user) it
    /// verifies against a dummy hash of the same cost, so the answer takes as long, and fails.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verdict, sqlx::Error> {
        let params = self.params;
        let dummy = self.dummy.clone();
        spawn_blocking(move || {
            let known = stored.is_some();
            let stored =
                stored.unwrap_or_else(|| dummy.get_or_init(|| hash_now(params, "dummy password")).clone());
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Verdict { valid: false, outdated: false };
            };
            let valid = known
                && Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok();
            let outdated = parsed.algorithm != argon2::ARGON2ID_IDENT
                || Params::try_from(&parsed).ok().is_none_or(|p| {
                    (p.m_cost(), p.t_cost(), p.p_cost())
                        != (params.memory_kib, params.iterations, params.parallelism)
                });
            Verdict { valid, outdated }
        })
        .await
    }
}

/// Runs CPU-heavy work on the blocking pool, keeping the tracing span.
async fn spawn_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, sqlx::Error> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("password hashing task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Params {
        Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new(cheap());
        let hash = passwords.hash("correct horse".to_string().into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let ok = passwords.verify("correct horse".to_string().into(), Some(hash.clone())).await.unwrap();
        assert!(ok.valid && !ok.outdated);
        let bad = passwords.verify("wrong horse".to_string().into(), Some(hash)).await.unwrap();
        assert!(!bad.valid);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let passwords = Passwords::new(cheap());
        let verdict = passwords.verify("dummy password".to_string().into(), None).await.unwrap();
        assert!(!verdict.valid);
    }

    #[tokio::test]
    async fn a_hash_made_with_other_parameters_is_outdated() {
        let old = Passwords::new(cheap());
        let hash = old.hash("pw-123456".to_string().into()).await.unwrap();
        let new = Passwords::new(Argon2Params { memory_kib: 128, ..cheap() });
        let verdict = new.verify("pw-123456".to_string().into(), Some(hash)).await.unwrap();
        assert!(verdict.valid && verdict.outdated);
    }
}
