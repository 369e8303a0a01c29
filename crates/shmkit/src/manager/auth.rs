//! The HMAC challenge-response handshake of `multiprocessing.connection`,
//! in both of CPython's forms:
//!
//! * **modern** (3.12+): the challenge is `#CHALLENGE#{sha256}` and 40
//!   random bytes; the answer is `{sha256}` and the HMAC-SHA256 of the whole
//!   message after `#CHALLENGE#`, prefix included, so that it cannot be
//!   downgraded;
//! * **legacy** (up to 3.11): the challenge is `#CHALLENGE#` and 20 random
//!   bytes; the answer is the raw 16-byte HMAC-MD5.
//!
//! Each side challenges the other: a server delivers first and then
//! answers, a client the reverse. An answer is judged as CPython 3.12+ judges
//! it, so both forms interoperate: a 3.11 peer answers a modern challenge
//! with the HMAC-MD5 of the whole message, which is accepted as legacy, and a
//! legacy challenge is answered with raw HMAC-MD5. Digests are compared in
//! constant time.

use crate::pyrepr::bytes_repr;
use hmac::{Hmac, Mac};

use super::connection::Connection;
use super::error::ManagerError;
use super::frame::AUTH_MAX_LEN;
use crate::error::Result;

/// A shared secret, kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AuthKey(Vec<u8>);

impl AuthKey {
    pub(crate) fn new(key: &[u8]) -> AuthKey {
        AuthKey(key.to_vec())
    }
}

impl std::ops::Deref for AuthKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// What a challenge starts with.
pub const CHALLENGE: &[u8] = b"#CHALLENGE#";
/// The verifier's reply to a right answer.
pub const WELCOME: &[u8] = b"#WELCOME#";
/// The verifier's reply to a wrong answer.
pub const FAILURE: &[u8] = b"#FAILURE#";

/// Random bytes in a legacy challenge; also the shortest challenge accepted.
const LEGACY_LEN: usize = 20;
/// Random bytes in a modern challenge.
const MODERN_LEN: usize = 40;
/// The length of an HMAC-MD5, which legacy peers send without a prefix.
const MD5_LEN: usize = 16;
/// The longest digest name CPython accepts between the braces.
const MAX_DIGEST_NAME: usize = 8;

/// A hash for the HMAC, by the name CPython puts between braces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Digest {
    /// `md5`: what CPython up to 3.11 uses, unprefixed.
    Md5,
    /// `sha256`: what CPython 3.12+ asks for.
    Sha256,
    /// `sha384`, which CPython 3.12+ also accepts.
    Sha384,
}

impl Digest {
    /// The name CPython writes between braces.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
        }
    }

    fn from_name(name: &[u8]) -> Option<Digest> {
        match name {
            b"md5" => Some(Digest::Md5),
            b"sha256" => Some(Digest::Sha256),
            b"sha384" => Some(Digest::Sha384),
            _ => None,
        }
    }

    /// HMAC of `message` under `key` with this hash.
    pub fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
        }
    }

    /// Checks in constant time that `tag` is the HMAC of `message`.
    fn verify(self, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message, tag),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message, tag),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message, tag),
        }
    }

    fn output_len(self) -> usize {
        match self {
            Digest::Md5 => 16,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
        }
    }
}

/// Which challenge a verifier sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChallengeKind {
    /// `{sha256}` and 40 random bytes, as CPython 3.12+ sends; every CPython
    /// version answers it. The default.
    #[default]
    Modern,
    /// 20 random bytes, as CPython up to 3.11 sends.
    Legacy,
}

/// A fresh challenge message (what follows `#CHALLENGE#`).
pub fn challenge(kind: ChallengeKind) -> Vec<u8> {
    let (mut message, random) = match kind {
        ChallengeKind::Modern => (b"{sha256}".to_vec(), MODERN_LEN),
        ChallengeKind::Legacy => (Vec::new(), LEGACY_LEN),
    };
    let start = message.len();
    message.resize(start + random, 0);
    getrandom::fill(&mut message[start..]).expect("the OS random number generator failed");
    message
}

fn auth_error(reason: impl Into<String>) -> ManagerError {
    ManagerError::Authentication(reason.into())
}

/// Splits a message into its digest name and payload, as CPython's
/// `_get_digest_name_and_payload` does: 16 or 20 bytes are legacy (no
/// digest), anything else must start with a known `{digest}`.
fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8]), ManagerError> {
    if message.len() == MD5_LEN || message.len() == LEGACY_LEN {
        return Ok((None, message));
    }
    if message.first() == Some(&b'{') {
        let search = &message[1..message.len().min(MAX_DIGEST_NAME + 2)];
        if let Some(close) = search.iter().position(|&b| b == b'}') {
            if let Some(digest) = Digest::from_name(&search[..close]) {
                return Ok((Some(digest), &message[close + 2..]));
            }
        }
    }
    Err(auth_error(format!(
        "unsupported message length, missing digest prefix, or unsupported digest: message={}",
        bytes_repr(message)
    )))
}

/// The answer to challenge `message`: raw HMAC-MD5 for a legacy challenge,
/// else `{digest}` and the HMAC of the whole message with that digest.
///
/// ```
/// use shmkit::manager::auth::{respond, verify};
/// let challenge = b"{sha256}0123456789012345678901234567890123456789";
/// let answer = respond(b"secret", challenge)?;
/// assert!(answer.starts_with(b"{sha256}") && answer.len() == 8 + 32);
/// verify(b"secret", challenge, &answer)?;
/// assert!(verify(b"wrong", challenge, &answer).is_err());
/// # Ok::<(), shmkit::manager::ManagerError>(())
/// ```
pub fn respond(authkey: &[u8], message: &[u8]) -> Result<Vec<u8>, ManagerError> {
    if message.len() < LEGACY_LEN {
        return Err(auth_error(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    match digest_and_payload(message)? {
        (None, _) => Ok(Digest::Md5.mac(authkey, message)),
        (Some(digest), _) => {
            let mut answer = format!("{{{}}}", digest.name()).into_bytes();
            answer.extend(digest.mac(authkey, message));
            Ok(answer)
        }
    }
}

/// Checks `response` to challenge `message` as CPython 3.12+ does: 16 or 20
/// bytes are an unprefixed HMAC-MD5, anything else carries a `{digest}`
/// prefix; the HMAC always covers the whole message.
pub fn verify(authkey: &[u8], message: &[u8], response: &[u8]) -> Result<(), ManagerError> {
    let (digest, tag) = digest_and_payload(response)?;
    let digest = digest.unwrap_or(Digest::Md5);
    if tag.len() != digest.output_len() {
        return Err(auth_error(format!(
            "expected '{}' of length {} got {}",
            digest.name(),
            digest.output_len(),
            tag.len()
        )));
    }
    if digest.verify(authkey, message, tag) {
        Ok(())
    } else {
        Err(auth_error("digest received was wrong"))
    }
}

/// Challenges the peer to prove it knows `authkey` (CPython's
/// `deliver_challenge`); sends `#WELCOME#` or `#FAILURE#`.
pub fn deliver_challenge(conn: &mut Connection, authkey: &[u8], kind: ChallengeKind) -> Result<()> {
    let message = challenge(kind);
    let mut wire = CHALLENGE.to_vec();
    wire.extend_from_slice(&message);
    conn.send_bytes(&wire)?;
    let response = conn.recv_bytes_max(AUTH_MAX_LEN)?;
    match verify(authkey, &message, &response) {
        Ok(()) => conn.send_bytes(WELCOME),
        Err(e) => {
            // The peer learns it failed; our error says why.
            let _ = conn.send_bytes(FAILURE);
            Err(e.into())
        }
    }
}

/// Answers the peer's challenge with `authkey` (CPython's
/// `answer_challenge`), in whichever form the challenge asks for.
pub fn answer_challenge(conn: &mut Connection, authkey: &[u8]) -> Result<()> {
    let wire = conn.recv_bytes_max(AUTH_MAX_LEN)?;
    let Some(message) = wire.strip_prefix(CHALLENGE) else {
        return Err(auth_error(format!(
            "Protocol error, expected challenge: message={}",
            bytes_repr(&wire)
        ))
        .into());
    };
    conn.send_bytes(&respond(authkey, message)?)?;
    let verdict = conn.recv_bytes_max(AUTH_MAX_LEN)?;
    if verdict == WELCOME {
        Ok(())
    } else {
        Err(auth_error("digest sent was rejected").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_out_of_debug_output() {
        let key = AuthKey::new(b"hunter2");
        assert_eq!(format!("{key:?}"), "<7 secret bytes>");
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The spec's §4.7 transcript (CPython 3.11, key `b'secret'`).
    #[test]
    fn legacy_answers_match_cpython() {
        let server_challenge = unhex("b2d40bd780b054316970c5af5c036af3542b51f9");
        let client_answer = unhex("68e3cfffd1468fbab9be58f6766b7e31");
        assert_eq!(
            respond(b"secret", &server_challenge).unwrap(),
            client_answer
        );
        verify(b"secret", &server_challenge, &client_answer).unwrap();

        let client_challenge = unhex("9f9ce7c7f0d5d000d388efef4537a88aefc230b3");
        let server_answer = unhex("ae811ef48c8166c0819bce830dc601af");
        assert_eq!(
            respond(b"secret", &client_challenge).unwrap(),
            server_answer
        );
    }

    #[test]
    fn a_311_answer_to_a_modern_challenge_is_accepted_as_legacy() {
        let message = challenge(ChallengeKind::Modern);
        assert_eq!(message.len(), 48);
        // What a 3.11 peer sends: raw HMAC-MD5 of the whole message.
        let md5 = Digest::Md5.mac(b"k", &message);
        verify(b"k", &message, &md5).unwrap();
        assert!(verify(b"other", &message, &md5).is_err());
    }

    #[test]
    fn modern_answers_cover_the_prefix() {
        let message = challenge(ChallengeKind::Modern);
        let answer = respond(b"k", &message).unwrap();
        assert_eq!(&answer[..8], b"{sha256}");
        assert_eq!(&answer[8..], &Digest::Sha256.mac(b"k", &message)[..]);
        verify(b"k", &message, &answer).unwrap();
        // Any supported digest may answer; the MAC still covers everything.
        let mut md5 = b"{md5}".to_vec();
        md5.extend(Digest::Md5.mac(b"k", &message));
        verify(b"k", &message, &md5).unwrap();
        let mut sha384 = b"{sha384}".to_vec();
        sha384.extend(Digest::Sha384.mac(b"k", &message));
        verify(b"k", &message, &sha384).unwrap();
    }

    #[test]
    fn bad_answers_get_cpythons_messages() {
        let message = challenge(ChallengeKind::Modern);
        let reason = |r: Result<(), ManagerError>| match r {
            Err(ManagerError::Authentication(reason)) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(verify(b"k", &message, &[0; 16])),
            "digest received was wrong"
        );
        assert_eq!(
            reason(verify(b"k", &message, b"{sha256}short")),
            "expected 'sha256' of length 32 got 5"
        );
        assert!(
            reason(verify(b"k", &message, b"{sha1}0123456789012345678901"))
                .starts_with("unsupported")
        );
        assert!(reason(verify(b"k", &message, b"")).starts_with("unsupported"));
        assert!(respond(b"k", b"too short").is_err());
        assert!(respond(b"k", &[b'x'; 30]).is_err());
        assert_eq!(respond(b"k", &[b'x'; 20]).unwrap().len(), 16);
    }
}
