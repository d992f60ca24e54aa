//! Password verifiers and the server side of the two password exchanges: SCRAM-SHA-256 (RFC
//! 5802 with RFC 7677's hash, as PostgreSQL runs it: docs "55.3. SASL Authentication") and md5
//! (docs "55.2.2", `AuthenticationMD5Password`).
//!
//! The stored SCRAM verifier holds the salt, the iteration count, `StoredKey = H(ClientKey)`
//! and `ServerKey`, never the password nor `SaltedPassword`: pgwire's own SCRAM handler checks a
//! proof against `SaltedPassword`, which would let anyone who reads the catalog log in, so the
//! proof is checked here against `StoredKey`, as PostgreSQL's `verify_client_proof` does
//! (pgwire's `gen_salted_password` still derives the keys, with SASLprep). Channel binding
//! (`SCRAM-SHA-256-PLUS`) is not offered.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac};

use crate::errors::{SqlError, SqlResult};

/// PostgreSQL's default `scram_iterations`.
pub const ITERATIONS: u32 = 4096;

/// Salt length in bytes (PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`).
const SALT_LEN: usize = 16;

/// A parsed SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iterations the client must run.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    /// The iteration count only: the keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Verifier {
        let salt: [u8; SALT_LEN] = rand::random();
        Verifier::with_salt(password, &salt, ITERATIONS)
    }

    /// The verifier of `password` with `salt` and `iterations`.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = pgwire::api::auth::sasl::scram::gen_salted_password(password, salt, iterations as usize);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// PostgreSQL's text form, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    /// Parses PostgreSQL's text form; None when `text` is not one.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (head, keys) = rest.split_once('$')?;
        let (iterations, salt) = head.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let v = Verifier {
            iterations: iterations.parse().ok().filter(|i| *i >= 1)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (v.stored_key.len() == 32 && v.server_key.len() == 32).then_some(v)
    }

    /// A verifier no password matches, for a user that does not exist or has no password: the
    /// exchange runs to its end, with a salt derived from the name, so a client cannot tell
    /// those apart from a wrong password (PostgreSQL's `scram_mock_salt`).
    pub fn mock(user: &str) -> Verifier {
        let salt = sha256(format!("sluice mock salt {user}").as_bytes())[..SALT_LEN].to_vec();
        let stored_key: [u8; 32] = rand::random();
        Verifier { iterations: ITERATIONS, salt, stored_key: stored_key.to_vec(), server_key: vec![0; 32] }
    }
}

/// The md5 digest PostgreSQL stores: `md5` then `hex(md5(password || user))`.
pub fn md5_digest(user: &str, password: &str) -> String {
    format!("md5{:x}", md5::compute(format!("{password}{user}")))
}

/// True when `response` (the client's `PasswordMessage`) answers the md5 challenge `salt` for
/// the stored digest `stored` (`md5` + 32 hex digits): `md5` + `hex(md5(hex digits || salt))`.
pub fn md5_matches(stored: &str, salt: &[u8; 4], response: &str) -> bool {
    let Some(hex) = stored.strip_prefix("md5") else {
        return false;
    };
    let mut bytes = hex.as_bytes().to_vec();
    bytes.extend_from_slice(salt);
    let expected = format!("md5{:x}", md5::compute(bytes));
    constant_time_eq(expected.as_bytes(), response.as_bytes())
}

/// Where a SCRAM exchange stands after the client's first message.
pub struct ServerFirst {
    /// `client-first-message-bare`, part of the AuthMessage.
    client_first_bare: String,
    /// The server's `server-first-message`, sent to the client.
    pub message: String,
    /// The combined nonce the client must echo.
    nonce: String,
    /// The GS2 header the client sent, which `c=` must repeat in base64.
    gs2_header: String,
    verifier: Verifier,
}

/// Answers a `client-first-message` (`n,,n=<user>,r=<nonce>`) with a `server-first-message`.
/// libpq leaves the user name empty (the start-up packet names the user); it is ignored.
///
/// Errors: 08P01 for a malformed message or one that asks for channel binding.
pub fn client_first(message: &[u8], verifier: Verifier) -> SqlResult<ServerFirst> {
    let text = std::str::from_utf8(message).map_err(|_| malformed())?;
    let mut parts = text.splitn(3, ',');
    let cbind = parts.next().ok_or_else(malformed)?;
    let authzid = parts.next().ok_or_else(malformed)?;
    let bare = parts.next().ok_or_else(malformed)?;
    match cbind {
        "n" | "y" => {}
        _ => return Err(SqlError::new("08P01", "SCRAM channel binding is not supported; connect with channel_binding=disable or prefer")),
    }
    if !authzid.is_empty() {
        return Err(SqlError::new("08P01", "SCRAM authorization identities are not supported"));
    }
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or_else(malformed)?;
    let server_nonce: [u8; 18] = rand::random();
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let message = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
    Ok(ServerFirst { client_first_bare: bare.to_string(), message, nonce, gs2_header: format!("{cbind},{authzid},"), verifier })
}

impl ServerFirst {
    /// Checks the `client-final-message` (`c=<gs2 header>,r=<nonce>,p=<proof>`): the proof
    /// must be `ClientKey XOR HMAC(StoredKey, AuthMessage)` with `H(ClientKey) = StoredKey`.
    /// Returns the `server-final-message` (`v=<ServerSignature>`) for the client to check.
    ///
    /// Errors: 28P01 when the proof is wrong, 08P01 for a malformed message.
    pub fn client_final(&self, message: &[u8], user: &str) -> SqlResult<String> {
        let text = std::str::from_utf8(message).map_err(|_| malformed())?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(malformed)?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if channel != Some(B64.encode(&self.gs2_header).as_str()) || nonce != Some(self.nonce.as_str()) {
            return Err(malformed());
        }
        let proof = B64.decode(proof).map_err(|_| malformed())?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.message, without_proof);
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(wrong_password(user));
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(wrong_password(user));
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// PostgreSQL's error for a failed password check (SQLSTATE 28P01), the same whether the user
/// exists or not.
pub fn wrong_password(user: &str) -> SqlError {
    SqlError::new("28P01", format!("password authentication failed for user \"{user}\""))
}

fn malformed() -> SqlError {
    SqlError::new("08P01", "malformed SCRAM message")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SCRAM client, as RFC 5802 section 3 computes the proof.
    fn client_proof(password: &str, client_first_bare: &str, server_first: &str, without_proof: &str) -> String {
        let (salt, iters) = {
            let salt = server_first.split(',').find_map(|a| a.strip_prefix("s=")).unwrap();
            let iters = server_first.split(',').find_map(|a| a.strip_prefix("i=")).unwrap();
            (B64.decode(salt).unwrap(), iters.parse::<usize>().unwrap())
        };
        let salted = pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, iters);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored = sha256(&client_key);
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac_sha256(&stored, auth.as_bytes());
        B64.encode(client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect::<Vec<u8>>())
    }

    fn exchange(verifier: Verifier, password: &str) -> SqlResult<String> {
        let first = client_first(b"n,,n=,r=abcdefgh", verifier)?;
        let nonce = first.message.split(',').next().unwrap().trim_start_matches("r=").to_string();
        assert!(nonce.starts_with("abcdefgh") && nonce.len() > 8);
        let without = format!("c=biws,r={nonce}");
        let proof = client_proof(password, "n=,r=abcdefgh", &first.message, &without);
        first.client_final(format!("{without},p={proof}").as_bytes(), "bi")
    }

    #[test]
    fn scram_accepts_the_password_and_nothing_else() {
        let v = Verifier::new("s3cret");
        let text = v.encode();
        assert!(text.starts_with("SCRAM-SHA-256$4096:") && !text.contains("s3cret"));
        let v = Verifier::parse(&text).expect("parses its own form");
        assert!(exchange(v.clone(), "s3cret").unwrap().starts_with("v="));
        assert_eq!(exchange(v, "wrong").unwrap_err().code, "28P01");
        assert_eq!(exchange(Verifier::mock("bi"), "s3cret").unwrap_err().code, "28P01");
        assert_eq!(Verifier::mock("bi").salt, Verifier::mock("bi").salt);
        assert!(Verifier::parse("md5abc").is_none());
        assert_eq!(client_first(b"p=tls-server-end-point,,n=,r=x", Verifier::mock("a")).err().unwrap().code, "08P01");
    }

    #[test]
    fn a_postgresql_verifier_is_understood() {
        // What PostgreSQL 15 stores for password 'pencil' with this salt.
        let v = Verifier::with_salt("pencil", &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(), 4096);
        assert_eq!(Verifier::parse(&v.encode()), Some(v));
    }

    #[test]
    fn md5_as_libpq_computes_it() {
        let stored = md5_digest("zmjiang", "themanwhochangedchina");
        let salt = [20, 247, 107, 249];
        // pgwire's test vector for the client's answer.
        assert!(md5_matches(&stored, &salt, "md521fe459d77d3e3ea9c9fcd5c11030d30"));
        assert!(!md5_matches(&stored, &salt, "md500000000000000000000000000000000"));
        assert_eq!(
            pgwire::api::auth::md5pass::hash_md5_password("zmjiang", "themanwhochangedchina", &salt),
            "md521fe459d77d3e3ea9c9fcd5c11030d30"
        );
    }
}
