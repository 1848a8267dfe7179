//! Web Push message encryption (RFC 8291, the `aes128gcm` content coding of RFC 8188)
//! and the VAPID authorization a push service asks for (RFC 8292: an ES256 JWT naming
//! the endpoint's origin, signed with the server's P-256 key).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The record size announced in the header; one record holds the whole message.
const RECORD_SIZE: u32 = 4096;
/// The largest payload one record can carry: the record size less the tag and the
/// padding delimiter.
pub(crate) const MAX_PAYLOAD: usize = RECORD_SIZE as usize - 16 - 1;
/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const TOKEN_TTL_SECS: i64 = 12 * 3600;

/// What can go wrong building a push message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    /// The subscription's keys are not what RFC 8291 describes.
    #[error("bad subscription key: {0}")]
    BadKey(&'static str),
    /// The payload does not fit one record.
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
    /// Encryption failed (it cannot, with valid keys).
    #[error("encryption failed")]
    Encrypt,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without padding (browsers send it without).
pub(crate) fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// Checks a subscription's keys: a P-256 public key (uncompressed point) and a 16-byte
/// secret, both base64url.
pub(crate) fn check_keys(p256dh: &str, auth: &str) -> Result<(), PushError> {
    let key = unb64(p256dh).ok_or(PushError::BadKey("p256dh is not base64url"))?;
    if key.len() != 65 || PublicKey::from_sec1_bytes(&key).is_err() {
        return Err(PushError::BadKey(
            "p256dh is not an uncompressed P-256 point",
        ));
    }
    match unb64(auth) {
        Some(a) if a.len() == 16 => Ok(()),
        _ => Err(PushError::BadKey("auth is not 16 bytes of base64url")),
    }
}

fn expand(prk: &Hkdf<Sha256>, info: &[u8], out: &mut [u8]) {
    prk.expand(info, out)
        .expect("lengths are far below the HKDF limit");
}

/// Encrypts `payload` for the subscription with keys `p256dh` and `auth` (RFC 8291 section 3):
/// a fresh key pair and salt each time, one record, the key id is our public key.
pub(crate) fn encrypt(payload: &[u8], p256dh: &str, auth: &str) -> Result<Vec<u8>, PushError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PushError::TooLarge(payload.len()));
    }
    check_keys(p256dh, auth)?;
    let ua_public_bytes = unb64(p256dh).ok_or(PushError::BadKey("p256dh"))?;
    let ua_public =
        PublicKey::from_sec1_bytes(&ua_public_bytes).map_err(|_| PushError::BadKey("p256dh"))?;
    let auth_secret = unb64(auth).ok_or(PushError::BadKey("auth"))?;

    let as_secret =
        p256::ecdh::EphemeralSecret::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = as_secret.diffie_hellman(&ua_public);
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);

    let (cek, nonce) = derive(
        shared.raw_secret_bytes(),
        &auth_secret,
        &ua_public_bytes,
        as_public.as_bytes(),
        &salt,
    );
    let mut plain = Vec::with_capacity(payload.len() + 1);
    plain.extend_from_slice(payload);
    plain.push(2); // the last record's padding delimiter
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| PushError::Encrypt)?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
        .map_err(|_| PushError::Encrypt)?;

    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// The content encryption key and nonce (RFC 8291 sections 3.3 and 3.4; RFC 8188 sections 2.2 and 2.3).
pub(crate) fn derive(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    expand(
        &Hkdf::<Sha256>::new(Some(auth_secret), ecdh_secret),
        &key_info,
        &mut ikm,
    );
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    expand(&prk, b"Content-Encoding: aes128gcm\0", &mut cek);
    expand(&prk, b"Content-Encoding: nonce\0", &mut nonce);
    (cek, nonce)
}

/// A push message's `Topic`: at most 32 base64url characters, the same for every notice
/// of one session, so the push service keeps only the newest.
pub(crate) fn topic(collapse_key: &str) -> String {
    let digest = Sha256::digest(collapse_key.as_bytes());
    b64(&digest[..24])
}

/// The server's VAPID key pair.
#[derive(Debug)]
pub(crate) struct Vapid {
    key: SigningKey,
    /// The public key, base64url of the uncompressed point: what browsers subscribe with
    /// (`applicationServerKey`) and what `k=` carries.
    pub(crate) public: String,
    /// The `sub` claim: a contact for the push service's operator.
    subject: String,
}

impl Vapid {
    /// A new random private key, base64url, to store.
    pub(crate) fn generate() -> String {
        let key = SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        b64(&key.to_bytes())
    }

    /// The key pair from a stored private key.
    pub(crate) fn from_private(private: &str, subject: String) -> anyhow::Result<Self> {
        let bytes =
            unb64(private).ok_or_else(|| anyhow::anyhow!("stored VAPID key is not base64url"))?;
        let secret = SecretKey::from_slice(&bytes)
            .map_err(|_| anyhow::anyhow!("stored VAPID key is not a P-256 key"))?;
        let public = b64(secret.public_key().to_encoded_point(false).as_bytes());
        Ok(Self {
            key: SigningKey::from(secret),
            public,
            subject,
        })
    }

    /// The `Authorization` header for a request to `endpoint` at `now` (Unix seconds):
    /// `vapid t=<JWT>, k=<public key>` (RFC 8292 section 3).
    pub(crate) fn authorization(&self, endpoint: &str, now: i64) -> anyhow::Result<String> {
        let url = url::Url::parse(endpoint)?;
        let audience = url.origin().ascii_serialization();
        let header = b64(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = b64(serde_json::json!({
            "aud": audience,
            "exp": now + TOKEN_TTL_SECS,
            "sub": self.subject,
        })
        .to_string()
        .as_bytes());
        let signing_input = format!("{header}.{claims}");
        // ES256 in a JWS is the raw 64-byte r‖s, not DER.
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            b64(&signature.to_bytes()),
            self.public
        ))
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    use super::*;

    /// Decrypts as a browser would (RFC 8291 section 3.4, from the receiving side).
    fn decrypt(body: &[u8], ua_secret: &SecretKey, auth: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        let rs = u32::from_be_bytes(body[16..20].try_into().unwrap());
        assert_eq!(rs, RECORD_SIZE);
        let idlen = body[20] as usize;
        let as_public = &body[21..21 + idlen];
        let sealed = &body[21 + idlen..];
        let shared = p256::ecdh::diffie_hellman(
            ua_secret.to_nonzero_scalar(),
            PublicKey::from_sec1_bytes(as_public).unwrap().as_affine(),
        );
        let ua_public = ua_secret.public_key().to_encoded_point(false);
        let (cek, nonce) = derive(
            shared.raw_secret_bytes(),
            auth,
            ua_public.as_bytes(),
            as_public,
            salt,
        );
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(Nonce::from_slice(&nonce), sealed)
            .unwrap();
        while plain.last() == Some(&0) {
            plain.pop();
        }
        assert_eq!(plain.pop(), Some(2));
        plain
    }

    #[test]
    fn a_message_round_trips_through_the_subscriptions_keys() {
        let ua = SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let p256dh = b64(ua.public_key().to_encoded_point(false).as_bytes());
        let auth = [7u8; 16];
        let body = encrypt(b"{\"hello\":1}", &p256dh, &b64(&auth)).unwrap();
        assert_eq!(decrypt(&body, &ua, &auth), b"{\"hello\":1}");
        // A fresh key and salt every time.
        assert_ne!(
            body,
            encrypt(b"{\"hello\":1}", &p256dh, &b64(&auth)).unwrap()
        );
        assert!(matches!(
            encrypt(&vec![b'x'; MAX_PAYLOAD + 1], &p256dh, &b64(&auth)),
            Err(PushError::TooLarge(_))
        ));
        assert!(check_keys("AAAA", &b64(&auth)).is_err());
        assert!(check_keys(&p256dh, "AAAA").is_err());
    }

    #[test]
    fn vapid_tokens_verify_with_the_public_key_and_name_the_origin() {
        let vapid =
            Vapid::from_private(&Vapid::generate(), "mailto:me@example.invalid".into()).unwrap();
        let header = vapid
            .authorization("https://push.example.invalid/wp/abc?x=1", 1_000)
            .unwrap();
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, vapid.public);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let key = VerifyingKey::from_sec1_bytes(&unb64(k).unwrap()).unwrap();
        let sig = Signature::from_slice(&unb64(sig).unwrap()).unwrap();
        key.verify(input.as_bytes(), &sig).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&unb64(input.split_once('.').unwrap().1).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.invalid");
        assert_eq!(claims["exp"], 1_000 + TOKEN_TTL_SECS);
        assert_eq!(topic("session_abc").len(), 32);
    }
}
