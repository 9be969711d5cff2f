//! Argon2id hashing, run on the blocking pool so it never stalls the async workers, and at most
//! `hash_concurrency` at a time: each hash fills `memory_kib` (19 MiB by default), so extra logins
//! wait for a permit instead of each allocating its own block (the memory of `serve` then stays
//! bounded by the permits, not by how many logins arrive at once). The wait for a permit is
//! bounded too ([`HASH_WAIT`], then 503), so a login flood cannot hold request slots for long.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

use crate::config::Argon2Params;

/// The longest a request waits for a hashing slot.
pub const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    permits: Arc<Semaphore>,
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
    /// A hasher with these parameters computing at most `concurrency` hashes at once (at least 1).
    pub fn new(params: Argon2Params, concurrency: usize) -> Self {
        Self {
            params,
            dummy: Arc::new(OnceLock::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Runs hashing work on the blocking pool once a permit is free, keeping the tracing span.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, sqlx::Error> {
        // A bounded wait: when every hashing slot stays busy this long, the request is answered
        // 503 with Retry-After instead of holding its request slot in an unbounded queue.
        let permit = match tokio::time::timeout(HASH_WAIT, self.permits.clone().acquire_owned()).await {
            Ok(permit) => {
                permit.map_err(|e| sqlx::Error::Protocol(format!("password hashing stopped: {e}")))?
            }
            Err(_) => {
                metrics::counter!("password_hash_rejections_total").increment(1);
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("every password hashing slot stayed busy for {} s", HASH_WAIT.as_secs()),
                )));
            }
        };
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(work)
        })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("password hashing task failed: {e}")))
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: SecretString) -> Result<String, sqlx::Error> {
        let params = self.params;
        self.run(move || hash_now(params, password.expose_secret())).await
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
        self.run(move || {
            let known = stored.is_some();
            let stored =
                stored.unwrap_or_else(|| dummy.get_or_init(|| hash_now(params, "dummy password")).clone());
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Verdict { valid: false, outdated: false };
            };
            // Verified whether or not the account exists (`known && verify` would skip the
            // work for unknown names and answer them measurably sooner).
            let matches =
                Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok();
            let valid = known && matches;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Params {
        Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new(cheap(), 2);
        let hash = passwords.hash("correct horse".to_string().into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let ok = passwords.verify("correct horse".to_string().into(), Some(hash.clone())).await.unwrap();
        assert!(ok.valid && !ok.outdated);
        let bad = passwords.verify("wrong horse".to_string().into(), Some(hash)).await.unwrap();
        assert!(!bad.valid);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let passwords = Passwords::new(cheap(), 2);
        let verdict = passwords.verify("dummy password".to_string().into(), None).await.unwrap();
        assert!(!verdict.valid);
    }

    #[tokio::test]
    async fn a_hash_made_with_other_parameters_is_outdated() {
        let old = Passwords::new(cheap(), 2);
        let hash = old.hash("pw-123456".to_string().into()).await.unwrap();
        let new = Passwords::new(Argon2Params { memory_kib: 128, ..cheap() }, 2);
        let verdict = new.verify("pw-123456".to_string().into(), Some(hash)).await.unwrap();
        assert!(verdict.valid && verdict.outdated);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_work_never_exceeds_the_bound_and_all_of_it_completes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Arrange: a bound of 2 and 12 jobs that each stay busy long enough to overlap.
        let passwords = Passwords::new(cheap(), 2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        // Act
        let jobs = (0..12).map(|i| {
            let (passwords, running, most) = (passwords.clone(), running.clone(), most.clone());
            async move {
                passwords
                    .run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await
                    .unwrap()
            }
        });
        let done = futures_util::future::join_all(jobs).await;
        // Assert
        assert_eq!(done, (0..12).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2, "two jobs overlap, never more");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hashes_all_complete_under_a_bound_of_one() {
        let passwords = Passwords::new(cheap(), 1);
        let hashes = (0..6).map(|i| {
            let passwords = passwords.clone();
            async move { passwords.hash(format!("password-{i}").into()).await.unwrap() }
        });
        let hashes = futures_util::future::join_all(hashes).await;
        for (i, hash) in hashes.into_iter().enumerate() {
            let verdict = passwords.verify(format!("password-{i}").into(), Some(hash)).await.unwrap();
            assert!(verdict.valid);
        }
    }
}
