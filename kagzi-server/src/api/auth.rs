//! API keys: when the server has keys configured (`KAGZI_API_KEY`), every `/v1` request must
//! carry one as `Authorization: Bearer <key>`. `/healthz`, `/readyz`, `/docs` and
//! `/openapi.json` stay open. Keys are compared as SHA-256 digests in constant time, so
//! neither a key's content nor its length leaks through timing; no key is ever logged.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::ApiKey;

/// The accepted keys, as digests. Empty: authentication is off.
#[derive(Clone, Default)]
pub(crate) struct Keys(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.0.len())
    }
}

impl Keys {
    /// The digests of `keys`.
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = &'a ApiKey>) -> Self {
        Self(Arc::new(
            keys.into_iter().map(|k| digest(k.expose())).collect(),
        ))
    }

    /// Whether any key is configured.
    pub(crate) fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, whatever matches.
    fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&presented)
            })
            .into()
    }
}

impl Keys {
    /// A dashboard session token valid until `expires` (seconds since the Unix epoch), when
    /// `presented` is one of the keys.
    pub(crate) fn session_for(&self, presented: &str, expires: i64) -> Option<String> {
        self.accepts(presented)
            .then(|| session_token(&digest(presented), expires))
    }

    /// Whether `token` is a session token of one of the keys that has not expired at `now`
    /// (seconds since the Unix epoch). Every key is compared, whatever matches.
    pub(crate) fn session_valid(&self, token: &str, now: i64) -> bool {
        let Some(expires) = token
            .split_once('.')
            .and_then(|(expires, _)| expires.parse::<i64>().ok())
        else {
            return false;
        };
        if expires <= now {
            return false;
        }
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found
                    | session_token(key, expires)
                        .as_bytes()
                        .ct_eq(token.as_bytes())
            })
            .into()
    }
}

/// `EXPIRES.HASH`: the key's digest and the expiry, hashed, so that a token neither reveals
/// the key nor can be made to last longer.
fn session_token(key_digest: &[u8; 32], expires: i64) -> String {
    let mut hash = Sha256::new();
    hash.update(key_digest);
    hash.update(b":kagzi-ui-session:");
    hash.update(expires.to_string().as_bytes());
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{expires}.{hex}")
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether requests to `path` need a key.
fn guarded(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The middleware: refuses a guarded request without a valid key with 401.
pub(crate) async fn require_key(keys: Keys, req: Request, next: Next) -> Response {
    if !keys.enabled() || !guarded(req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if keys.accepts(token) => next.run(req).await,
        Some(_) => ApiError::Unauthorized {
            detail: "the API key is not valid".to_owned(),
            challenge: r#"Bearer realm="kagzi", error="invalid_token""#,
        }
        .into_response(),
        None => ApiError::Unauthorized {
            detail: "this server needs an API key: send `Authorization: Bearer <key>`".to_owned(),
            challenge: r#"Bearer realm="kagzi""#,
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_key_is_accepted_and_nothing_else() {
        let keys = Keys::new(&[ApiKey::from("old"), ApiKey::from("new")]);
        assert!(keys.enabled());
        assert!(keys.accepts("old"));
        assert!(keys.accepts("new"));
        assert!(!keys.accepts("ol"));
        assert!(!keys.accepts(""));
        assert!(!Keys::default().enabled());
    }

    #[test]
    fn a_session_token_is_valid_until_it_expires_and_only_for_a_key() {
        let keys = Keys::new(&[ApiKey::from("old"), ApiKey::from("new")]);
        assert_eq!(keys.session_for("wrong", 100), None);
        let token = keys.session_for("new", 100).expect("a key");
        assert!(keys.session_valid(&token, 99));
        assert!(!keys.session_valid(&token, 100));
        let longer = token.replacen("100.", "200.", 1);
        assert!(
            !keys.session_valid(&longer, 99),
            "the expiry is part of the hash"
        );
        assert!(!keys.session_valid("100.abc", 99));
        assert!(!keys.session_valid("garbage", 99));
        let other = Keys::new(&[ApiKey::from("other")]);
        assert!(!other.session_valid(&token, 99));
    }

    #[test]
    fn only_v1_is_guarded() {
        assert!(guarded("/v1/runs"));
        assert!(guarded("/v1"));
        assert!(!guarded("/v10"));
        assert!(!guarded("/healthz"));
        assert!(!guarded("/docs/"));
        assert!(!guarded("/openapi.json"));
    }
}
