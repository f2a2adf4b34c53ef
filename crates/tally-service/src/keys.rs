//! API keys: `tly_` and 64 hex digits of a 32-byte random secret, stored as its SHA-256 only.

use rand::RngCore;
use sha2::{Digest, Sha256};
use tally_domain::{ApiKey, AuditAction, AuditEntry, KeyScope, RateLimit};
use tally_store::Store;
use uuid::Uuid;

use crate::{ServiceError, Tally};

/// Prefix of every key Tally issues, so that leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "tly_";
/// Random bytes in a key's secret.
pub const KEY_SECRET_BYTES: usize = 32;

/// Lowercase hex of `bytes`, without an allocation per byte (this runs on every request).
pub(crate) fn to_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Lowercase hex SHA-256 of a presented key.
pub fn hash_key(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    to_hex(&digest, &mut out);
    out
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A new random secret key.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; KEY_SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_SECRET_BYTES);
    out.push_str(KEY_PREFIX);
    to_hex(&bytes, &mut out);
    out
}

impl<S: Store> Tally<S> {
    /// Creates a key with the server's default rate limit for its scope; returns it stored
    /// (hash only) and the secret, which is shown once.
    pub async fn create_key(
        &self,
        scope: KeyScope,
        actor: Option<Uuid>,
    ) -> Result<(ApiKey, String), ServiceError> {
        self.create_key_with(scope, None, actor).await
    }

    /// `create_key`, with the key's own rate limit (which wins over the server's default).
    pub async fn create_key_with(
        &self,
        scope: KeyScope,
        rate_limit: Option<RateLimit>,
        actor: Option<Uuid>,
    ) -> Result<(ApiKey, String), ServiceError> {
        if let KeyScope::Tenant(t) = &scope {
            self.require_tenant(t).await?;
        }
        let secret = generate_secret();
        let key = ApiKey {
            id: Uuid::now_v7(),
            scope,
            key_hash: hash_key(&secret),
            created_at: self.now(),
            last_used_at: None,
            revoked_at: None,
            rate_limit,
        };
        let details = serde_json::json!({
            "key_id": key.id.to_string(),
            "scope": key.scope.kind(),
            "rate_limit": key.rate_limit.map(|r| r.to_string()),
        });
        let audit =
            AuditEntry::new(self.now(), actor, AuditAction::KeyCreate, key.scope.tenant().cloned(), details);
        self.store.insert_key(&key, &audit).await?;
        self.invalidate();
        Ok((key, secret))
    }

    /// Every key, oldest first (hashes, never secrets).
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, ServiceError> {
        Ok(self.store.list_keys().await?)
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, id: Uuid, actor: Option<Uuid>) -> Result<(), ServiceError> {
        let details = serde_json::json!({"key_id": id.to_string()});
        let tenant = self
            .store
            .list_keys()
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .and_then(|k| k.scope.tenant().cloned());
        let audit = AuditEntry::new(self.now(), actor, AuditAction::KeyRevoke, tenant, details);
        self.store.revoke_key(id, self.now(), &audit).await?;
        self.invalidate();
        Ok(())
    }

    /// The live key a presented secret belongs to, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<ApiKey>, ServiceError> {
        let presented = hash_key(secret);
        let found = self.store.config_cache().key_by_hash(&self.store, &presented).await?;
        let Some(key) = found else { return Ok(None) };
        // The look-up went by hash; compare again in constant time so that no timing of
        // ours depends on how much of a guess was right.
        if !constant_time_eq(key.key_hash.as_bytes(), presented.as_bytes()) || key.revoked_at.is_some() {
            return Ok(None);
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hash_to_64_hex_digits() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        let h = hash_key(&a);
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
