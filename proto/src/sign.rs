//! HTTP Message Signatures (RFC 9421) with ed25519, and `Content-Digest` (RFC 9530).
//!
//! Admin API requests must prove that they come from the holder of an enrolled ed25519 key,
//! that nothing was changed on the way, and that they are not replays. The CLI and the sidecar
//! proxy sign with [`Signer`]; the admin server runs [`parse`], looks the key up by
//! [`ParsedSignature::keyid`], calls [`ParsedSignature::verify`], then
//! [`ReplayGuard::check_and_remember`].
//!
//! The profile: label `sig1` covering `"@method" "@authority" "@path" "@query"` (RFC 9421
//! §2.2.1, §2.2.3, §2.2.6, §2.2.7) plus the `content-digest` field (§2.1) whenever the body is
//! non-empty, with the parameters `created`, `expires`, `nonce`, `keyid` and `alg="ed25519"`
//! (§2.3). The signature base follows §2.5 and the algorithm §3.3.6; the headers are the
//! `Signature-Input` and `Signature` dictionaries of §4.1 and §4.2, parsed as RFC 8941
//! Structured Fields by `sfv`. The `@signature-params` line is the received inner list
//! re-serialized, which RFC 8941 makes canonical, so it is the text any conformant signer
//! signed. `Content-Digest` carries a `sha-256` digest of the body (RFC 9530 §2).

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use http::{header::HOST, HeaderMap, HeaderValue, Method, Uri};
use sfv::{Dictionary, FieldType as _, ListEntry, Parser};
use sfv::{StringRef, Version};
use sha2::{Digest as _, Sha256};

const LABEL: &str = "sig1";
const LIFETIME_SECS: u64 = 60;
const REQUIRED: [&str; 4] = ["@method", "@authority", "@path", "@query"];
const DIGEST: &str = "content-digest";

/// `return Err(SignError::$kind(format!(...)))`.
macro_rules! fail {
    ($kind:ident, $($msg:tt)+) => { return Err(SignError::$kind(format!($($msg)+))) };
}

/// RFC 9530 `Content-Digest` value for a body: `sha-256=:BASE64:`.
pub fn content_digest(body: &[u8]) -> String {
    BodyHash::of(body).content_digest()
}

/// A body's length and SHA-256, for signing or checking a body that is streamed or
/// spooled rather than held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyHash {
    pub sha256: [u8; 32],
    pub len: u64,
}

impl BodyHash {
    /// The hash of a body held in memory.
    pub fn of(body: &[u8]) -> Self {
        BodyHash {
            sha256: Sha256::digest(body).into(),
            len: body.len() as u64,
        }
    }

    /// The RFC 9530 `Content-Digest` value.
    pub fn content_digest(&self) -> String {
        let mut out = String::with_capacity(54);
        out.push_str("sha-256=:");
        STANDARD.encode_string(self.sha256, &mut out);
        out.push(':');
        out
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Whether `s` has the form of a [`fingerprint`]: 52 characters of lowercase base32.
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 52 && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
}

/// Fingerprint of an ed25519 public key: lowercase unpadded RFC 4648 base32 of the SHA-256 of
/// the raw 32-byte key, 52 characters.
pub fn fingerprint(key: &VerifyingKey) -> String {
    data_encoding::BASE32_NOPAD
        .encode(&Sha256::digest(key.as_bytes()))
        .to_ascii_lowercase()
}

/// Signs outgoing requests with an ed25519 key under a key id (usually its [`fingerprint`]).
pub struct Signer<'a> {
    /// The private key.
    pub key: &'a SigningKey,
    /// The `keyid` parameter the verifier uses to find the public key.
    pub keyid: &'a str,
}

impl Signer<'_> {
    /// Adds `Content-Digest` (only for a non-empty body; removed otherwise), `Signature-Input`
    /// and `Signature` to `headers`, signing label `sig1` over `@method @authority @path @query`
    /// (+ `content-digest`) with `created=now`, `expires=now+60`, a random 16-byte nonce,
    /// `keyid` and `alg="ed25519"`. Without a `Host` header, one is set from `uri`'s authority
    /// so that the verifier sees the authority that was signed. Fails when there is neither,
    /// or when `keyid` is not printable ASCII.
    pub fn sign(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: &[u8],
        now_unix: u64,
    ) -> Result<(), SignError> {
        self.sign_hashed(method, uri, headers, &BodyHash::of(body), now_unix)
    }

    /// [`Self::sign`] for a body known by its hash (streamed or spooled to disk).
    pub fn sign_hashed(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: &BodyHash,
        now_unix: u64,
    ) -> Result<(), SignError> {
        let key = self.key;
        sign_with(
            Alg::Ed25519,
            self.keyid,
            (method, uri, headers, body, now_unix),
            |base| key.sign(base).to_bytes().to_vec(),
        )
    }

    /// [`Self::sign_hashed`] for a caller that writes the request itself: the
    /// three headers' values, for the request `covered` describes.
    pub fn sign_covered(
        &self,
        covered: &Covered<'_>,
        body: &BodyHash,
        now_unix: u64,
    ) -> Result<SignatureHeaders, SignError> {
        let key = self.key;
        sign_covered(Alg::Ed25519, self.keyid, covered, body, now_unix, |base| {
            key.sign(base).to_bytes().to_vec()
        })
    }
}

/// Signs outgoing calls between hosts with a session key (`alg="hmac-sha256"`,
/// `keyid` = the session id): the same components and parameters as [`Signer`].
pub struct HmacSigner<'a> {
    /// The session key both hosts derived (`session`).
    pub key: &'a [u8; 32],
    /// The session id.
    pub keyid: &'a str,
}

impl HmacSigner<'_> {
    /// [`Signer::sign_hashed`] with HMAC-SHA256 under the session key.
    pub fn sign_hashed(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: &BodyHash,
        now_unix: u64,
    ) -> Result<(), SignError> {
        let key = self.key;
        sign_with(
            Alg::HmacSha256,
            self.keyid,
            (method, uri, headers, body, now_unix),
            |base| hmac_sha256(key, base).to_vec(),
        )
    }

    /// [`Signer::sign_covered`] with HMAC-SHA256 under the session key.
    pub fn sign_covered(
        &self,
        covered: &Covered<'_>,
        body: &BodyHash,
        now_unix: u64,
    ) -> Result<SignatureHeaders, SignError> {
        let key = self.key;
        sign_covered(
            Alg::HmacSha256,
            self.keyid,
            covered,
            body,
            now_unix,
            |base| hmac_sha256(key, base).to_vec(),
        )
    }
}

/// What a signature covers of a request (`@method`, `@authority`, `@path`,
/// `@query`), for a caller that writes the request as bytes itself: it sends
/// `authority` as the `Host` header and `path` and `query` as the target.
#[derive(Debug, Clone, Copy)]
pub struct Covered<'a> {
    pub method: &'a str,
    /// The `Host` header's value (signed lowercased, as a verifier reads it).
    pub authority: &'a str,
    /// The path; empty is signed as `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// The header values a signature adds to a request.
#[derive(Debug)]
pub struct SignatureHeaders {
    /// `Content-Digest`; none for an empty body (the request must then carry none).
    pub content_digest: Option<String>,
    pub signature_input: String,
    pub signature: String,
}

/// HMAC-SHA256 of `data` under `key`.
fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The signature algorithms of this profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// One ed25519 signature by a host or admin key (`keyid` = its fingerprint).
    Ed25519,
    /// HMAC-SHA256 under a session key between two hosts (`keyid` = the session id).
    HmacSha256,
}

impl Alg {
    /// The `alg` parameter's value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Ed25519 => "ed25519",
            Alg::HmacSha256 => "hmac-sha256",
        }
    }
}

type ToSign<'r> = (&'r Method, &'r Uri, &'r mut HeaderMap, &'r BodyHash, u64);

/// Sets `Host` (if missing) and `Content-Digest`, then `Signature-Input` and
/// `Signature` with `mac` over the signature base.
fn sign_with(
    alg: Alg,
    keyid: &str,
    (method, uri, headers, body, now_unix): ToSign<'_>,
    mac: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<(), SignError> {
    if !headers.contains_key(HOST) {
        let Some(authority) = uri.authority() else {
            fail!(
                Malformed,
                "cannot sign: no Host header and no absolute URI; set either"
            )
        };
        headers.insert(HOST, header_value(authority.as_str())?);
    }
    let mut hosts = headers.get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        fail!(Malformed, "the request has several Host headers")
    };
    let Ok(host) = host.to_str() else {
        fail!(Malformed, "header host is not ASCII")
    };
    let covered = Covered {
        method: method.as_str(),
        authority: host.trim_matches([' ', '\t']),
        path: uri.path(),
        query: uri.query(),
    };
    let signed = sign_covered(alg, keyid, &covered, body, now_unix, mac)?;
    match signed.content_digest {
        Some(d) => headers.insert(DIGEST, owned_header_value(d)?),
        None => headers.remove(DIGEST),
    };
    headers.insert(
        "signature-input",
        owned_header_value(signed.signature_input)?,
    );
    headers.insert("signature", owned_header_value(signed.signature)?);
    Ok(())
}

/// The signature of the request `covered` describes, with `mac` over its
/// signature base: the one place a signature is made (RFC 9421 §3.1).
fn sign_covered(
    alg: Alg,
    keyid: &str,
    covered: &Covered<'_>,
    body: &BodyHash,
    now_unix: u64,
    mac: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<SignatureHeaders, SignError> {
    // What a caller writes into the request line has no space or control
    // character, and the `Host` value no control character: nothing signed can
    // end a line or split the request line. (UTF-8 in a path is taken, as
    // httparse and `http` take it.)
    let control = |b: u8| b < b' ' || b == 0x7f;
    let in_line = |v: &str| v.bytes().all(|b| b != b' ' && !control(b));
    if covered.method.is_empty()
        || !in_line(covered.method)
        || !in_line(covered.path)
        || !in_line(covered.query.unwrap_or_default())
        || covered.authority.bytes().any(control)
    {
        fail!(
            Malformed,
            "cannot sign: the method, path or query has a space or a control character, or the authority a control character"
        )
    }
    let digest = (!body.is_empty()).then(|| body.content_digest());
    let components: &[&str] = if digest.is_some() {
        &[REQUIRED[0], REQUIRED[1], REQUIRED[2], REQUIRED[3], DIGEST]
    } else {
        &REQUIRED
    };
    let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    let expires = now_unix.saturating_add(LIFETIME_SECS);
    // Each header's text is made once, in the buffer it is sent from.
    let mut input = String::with_capacity(LABEL.len() + 170 + keyid.len());
    input.push_str(LABEL);
    input.push('=');
    let params = input.len();
    push_signature_params(
        &mut input, components, now_unix, expires, &nonce, keyid, alg,
    )?;
    // The base (§2.5), as `signature_base` reads it back from a request.
    let mut base = String::with_capacity(256 + input.len());
    base.push_str("\"@method\": ");
    base.push_str(covered.method);
    base.push_str("\n\"@authority\": ");
    let start = base.len();
    base.push_str(covered.authority);
    base[start..].make_ascii_lowercase();
    base.push_str("\n\"@path\": ");
    base.push_str(if covered.path.is_empty() {
        "/"
    } else {
        covered.path
    });
    base.push_str("\n\"@query\": ?");
    base.push_str(covered.query.unwrap_or_default());
    if let Some(d) = &digest {
        base.push_str("\n\"content-digest\": ");
        base.push_str(d);
    }
    base.push_str("\n\"@signature-params\": ");
    base.push_str(&input[params..]);
    let mut signature = String::with_capacity(LABEL.len() + 92);
    signature.push_str(LABEL);
    signature.push_str("=:");
    STANDARD.encode_string(mac(base.as_bytes()), &mut signature);
    signature.push(':');
    Ok(SignatureHeaders {
        content_digest: digest,
        signature_input: input,
        signature,
    })
}

/// Freshness limits the receiver enforces.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// How far `created` may lie in the receiver's future (signer clock ahead); default 30.
    pub max_skew_secs: u64,
    /// Longest allowed `expires - created`; default 60.
    pub max_lifetime_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_skew_secs: 30,
            max_lifetime_secs: 60,
        }
    }
}

/// A parsed but not yet verified signature, so the caller can look the key up by key id.
/// (No `PartialEq`: comparing tags that way would not be constant-time; compare
/// [`ParsedSignature::reading`] where two parses must agree.)
#[derive(Debug, Clone)]
pub struct ParsedSignature {
    label: Name,
    components: Vec<Name>,
    params: String,
    keyid: String,
    nonce: Option<String>,
    created: Option<u64>,
    expires: Option<u64>,
    alg: Alg,
    /// The ed25519 signature; all zeros (never valid) for `hmac-sha256`.
    signature: Signature,
    /// The HMAC-SHA256 tag of an `hmac-sha256` signature.
    mac: Option<[u8; 32]>,
}

impl ParsedSignature {
    /// Everything read from the headers, as text: for checking that two
    /// parsers agree (tests and fuzzing), never for checking a signature.
    #[doc(hidden)]
    pub fn reading(&self) -> String {
        format!("{self:?}")
    }

    /// The `keyid` parameter (not yet authenticated).
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The `nonce` parameter, or "" when absent ([`Self::verify`] refuses that).
    pub fn nonce(&self) -> &str {
        self.nonce.as_deref().unwrap_or_default()
    }

    /// The `expires` parameter, or 0 when absent ([`Self::verify`] refuses that).
    pub fn expires(&self) -> u64 {
        self.expires.unwrap_or_default()
    }

    /// The `created` parameter, or 0 when absent ([`Self::verify`] refuses that).
    pub fn created(&self) -> u64 {
        self.created.unwrap_or_default()
    }

    /// The signature's algorithm (`alg`; `ed25519` when absent).
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Checks an `hmac-sha256` signature under a session key: the covered
    /// components and freshness as [`Self::verify_headers`], and the tag compared in
    /// constant time. The body is checked later with [`Self::check_body`].
    #[allow(clippy::too_many_arguments)]
    pub fn verify_hmac_headers(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        expects_body: bool,
        key: &[u8; 32],
        now_unix: u64,
        policy: &Policy,
    ) -> Result<(), SignError> {
        use hmac::Mac as _;
        let Some(tag) = self.mac.filter(|_| self.alg == Alg::HmacSha256) else {
            fail!(UnsupportedAlgorithm, "signature {:?} is not alg=\"hmac-sha256\": a session key checks only session signatures", self.label)
        };
        self.check_covered(headers, expects_body, now_unix, policy)?;
        let base = signature_base(&self.components, &self.params, method, uri, headers)?;
        let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(base.as_bytes());
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&tag).is_err() {
            fail!(BadSignature, "signature {:?} does not verify under session {:?}: the method, authority, path, query or a covered header changed after signing, or the session key differs; sign the request exactly as it is sent", self.label, self.keyid);
        }
        Ok(())
    }

    fn only_ed25519(&self) -> Result<(), SignError> {
        if self.alg != Alg::Ed25519 {
            fail!(UnsupportedAlgorithm, "signature algorithm {:?} is only for session calls between hosts: sign with an ed25519 key and alg=\"ed25519\"", self.alg.name());
        }
        Ok(())
    }

    /// The label of the signature that was picked from the headers.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Verifies against `key`: required components covered (`content-digest` too when the body
    /// is non-empty), `created`/`expires`/`nonce` present, freshness under `policy`, the ed25519
    /// signature over the rebuilt signature base, and `Content-Digest` against `body`.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        key: &VerifyingKey,
        now_unix: u64,
        policy: &Policy,
    ) -> Result<(), SignError> {
        self.verify_hashed(
            method,
            uri,
            headers,
            &BodyHash::of(body),
            key,
            now_unix,
            policy,
        )
    }

    /// [`Self::verify`] for a body known by its hash (spooled while it was received).
    #[allow(clippy::too_many_arguments)]
    pub fn verify_hashed(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &BodyHash,
        key: &VerifyingKey,
        now_unix: u64,
        policy: &Policy,
    ) -> Result<(), SignError> {
        self.verify_headers(
            method,
            uri,
            headers,
            !body.is_empty(),
            key,
            now_unix,
            policy,
        )?;
        self.check_body(headers, body)
    }

    /// Everything but the body: covered components, freshness and the signature.
    /// `expects_body` (from Content-Length or Transfer-Encoding) makes
    /// `content-digest` required, so a receiver can refuse before reading a body.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_headers(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        expects_body: bool,
        key: &VerifyingKey,
        now_unix: u64,
        policy: &Policy,
    ) -> Result<(), SignError> {
        self.check_covered(headers, expects_body, now_unix, policy)?;
        self.verify_signature(method, uri, headers, key)
    }

    /// The covered components and the parameters `created`, `expires` and `nonce`, fresh.
    fn check_covered(
        &self,
        headers: &HeaderMap,
        expects_body: bool,
        now_unix: u64,
        policy: &Policy,
    ) -> Result<(), SignError> {
        let needed = REQUIRED
            .iter()
            .chain((expects_body || headers.contains_key(DIGEST)).then_some(&DIGEST));
        if let Some(name) = needed
            .into_iter()
            .find(|n| !self.components.iter().any(|c| c == *n))
        {
            fail!(MissingComponent, "signature does not cover {name:?}: sign with (\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\")");
        }
        let (Some(created), Some(expires), Some(_)) = (
            self.created,
            self.expires,
            self.nonce.as_deref().filter(|n| !n.is_empty()),
        ) else {
            fail!(MissingComponent, "signature lacks created, expires or nonce: sign with created, expires, nonce and keyid")
        };
        check_times(created, expires, now_unix, policy)
    }

    /// Everything [`Self::verify_headers`] checks but the ed25519 signature itself, which is
    /// left to the caller (to verify many calls in one batch): returns what was signed, for
    /// [`Self::signature`] to be checked against. A failed check is [`Self::bad_signature`].
    pub fn signed_base(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        expects_body: bool,
        now_unix: u64,
        policy: &Policy,
    ) -> Result<String, SignError> {
        self.only_ed25519()?;
        self.check_covered(headers, expects_body, now_unix, policy)?;
        signature_base(&self.components, &self.params, method, uri, headers)
    }

    /// The ed25519 signature the request carries (not yet verified).
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The refusal for a signature that does not verify over [`Self::signed_base`].
    pub fn bad_signature(&self) -> SignError {
        SignError::BadSignature(format!("signature {:?} does not verify with the key of keyid {:?}: the method, authority, path, query or a covered header changed after signing, or another key signed; sign the request exactly as it is sent, with the enrolled key", self.label, self.keyid))
    }

    /// The body against the signed `Content-Digest`, once it has been read.
    pub fn check_body(&self, headers: &HeaderMap, body: &BodyHash) -> Result<(), SignError> {
        if !body.is_empty() && !self.components.iter().any(|c| c == DIGEST) {
            fail!(
                MissingComponent,
                "the request has a body but the signature does not cover content-digest"
            );
        }
        if !body.is_empty() || headers.contains_key(DIGEST) {
            check_digest(headers, body)?;
        }
        Ok(())
    }

    /// Checks only the ed25519 signature over the signature base rebuilt from the request.
    fn verify_signature(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        key: &VerifyingKey,
    ) -> Result<(), SignError> {
        self.only_ed25519()?;
        let base = signature_base(&self.components, &self.params, method, uri, headers)?;
        if key.verify_strict(base.as_bytes(), &self.signature).is_err() {
            return Err(self.bad_signature());
        }
        Ok(())
    }
}

/// Parses `Signature-Input` and `Signature`, taking the first `Signature-Input` label that is
/// also in `Signature`. Refuses an `alg` other than `ed25519` and a missing `keyid`.
///
/// Headers in the exact form this module signs (one line each, one label, the
/// canonical serialization) are read by a strict scanner; anything else goes to
/// the general RFC 8941 parser. Both hand the same parts to one check, and the
/// scanner takes only text the general parser reads the same way (the fuzz
/// target `signature` asserts it).
pub fn parse(headers: &HeaderMap) -> Result<ParsedSignature, SignError> {
    too_long(headers)?;
    match canonical(headers) {
        Some(raw) => raw.check(),
        None => general(headers)?.check(),
    }
}

/// [`parse`] by the strict scanner alone: `None` when the headers are not in the
/// form it reads (for fuzzing it against [`parse_general`]).
#[doc(hidden)]
pub fn parse_canonical(headers: &HeaderMap) -> Option<Result<ParsedSignature, SignError>> {
    if let Err(e) = too_long(headers) {
        return Some(Err(e));
    }
    canonical(headers).map(Raw::check)
}

/// [`parse`] by the general RFC 8941 parser alone.
#[doc(hidden)]
pub fn parse_general(headers: &HeaderMap) -> Result<ParsedSignature, SignError> {
    too_long(headers)?;
    general(headers)?.check()
}

/// The most `Signature-Input` and `Signature` text read, each: ours are ~200 and
/// ~100 bytes. Anything read before the signature is checked is a stranger's
/// to make long, so it is kept short.
const MAX_SIGNATURE_HEADER: usize = 4096;
/// The most components one signature may cover (ours cover five).
const MAX_COMPONENTS: usize = 32;

/// Refuses signature headers longer than [`MAX_SIGNATURE_HEADER`] in all.
fn too_long(headers: &HeaderMap) -> Result<(), SignError> {
    for name in ["signature-input", "signature"] {
        let len: usize = headers.get_all(name).iter().map(|v| v.len()).sum();
        if len > MAX_SIGNATURE_HEADER {
            fail!(
                Malformed,
                "the {name} header is {len} bytes, more than the {MAX_SIGNATURE_HEADER} a signature needs"
            );
        }
    }
    Ok(())
}

/// A label, component or parameter name: the ones our signers write are not
/// copied (a parse would otherwise make a dozen small strings per call).
type Name = Cow<'static, str>;

/// `s` as a [`Name`]: borrowed when it is one our signers write.
fn name(s: &str) -> Name {
    Cow::Borrowed(match s {
        LABEL => LABEL,
        "@method" => "@method",
        "@authority" => "@authority",
        "@path" => "@path",
        "@query" => "@query",
        DIGEST => DIGEST,
        "created" => "created",
        "expires" => "expires",
        "nonce" => "nonce",
        "keyid" => "keyid",
        "alg" => "alg",
        _ => return Cow::Owned(s.to_owned()),
    })
}

/// A parameter's value as either parser read it.
#[derive(Debug)]
enum Param {
    Text(String),
    Int(i64),
    Other,
}

/// A signature's parts as read from the headers, not yet checked.
struct Raw {
    label: Name,
    /// The covered components (already checked to be strings without parameters).
    components: Vec<Name>,
    /// `Signature-Input`'s parameters, in order.
    params: Vec<(Name, Param)>,
    /// The `@signature-params` value: the inner list, serialized.
    serialized: String,
    /// `Signature`'s byte sequence.
    bytes: Vec<u8>,
}

/// The one line of header `name`, trimmed; `None` when absent, repeated or not ASCII.
fn one_line<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut all = headers.get_all(name).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    Some(v.to_str().ok()?.trim_matches([' ', '\t']))
}

/// A field name as a signature must cover it: what `http::HeaderName` takes
/// (RFC 9110 `token`), already lowercase.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// An RFC 8941 string with nothing to escape, as [`sign_with`] writes them:
/// printable ASCII without `"`, `\` or `;`.
fn plain_string(v: &str) -> Option<&str> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    inner
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && !matches!(b, b'"' | b'\\' | b';'))
        .then_some(inner)
}

/// The strict scanner: `LABEL=("c1" "c2" ...);created=N;expires=N;nonce="..";keyid="..";alg=".."`
/// and `LABEL=:BASE64:`, exactly as [`sign_with`] writes them (integers without
/// leading zeros, strings without escapes), else `None`.
fn canonical(headers: &HeaderMap) -> Option<Raw> {
    let input = one_line(headers, "signature-input")?;
    let sig = one_line(headers, "signature")?;
    let (label, list) = input.split_once('=')?;
    let (sig_label, sig_value) = sig.split_once('=')?;
    let key_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if label != sig_label
        || !label.starts_with(|c: char| c.is_ascii_lowercase())
        || !label.bytes().all(key_char)
    {
        return None;
    }
    let b64 = sig_value.strip_prefix(':')?.strip_suffix(':')?;
    let bytes = STANDARD.decode(b64).ok()?;
    let (items, rest) = list.strip_prefix('(')?.split_once(')')?;
    let mut components = Vec::new();
    for item in items.split(' ') {
        let name = item.strip_prefix('"')?.strip_suffix('"')?;
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'@' || b == b'-';
        if name.is_empty() || !name.bytes().all(ok) {
            return None;
        }
        components.push(self::name(name));
    }
    let mut params = Vec::with_capacity(5);
    let mut pieces = rest.strip_prefix(';')?.split(';');
    for (want, int) in [
        ("created", true),
        ("expires", true),
        ("nonce", false),
        ("keyid", false),
        ("alg", false),
    ] {
        let (k, v) = pieces.next()?.split_once('=')?;
        if k != want {
            return None;
        }
        let value = if int {
            let canonical = v == "0" || (!v.starts_with('0') && (1..=15).contains(&v.len()));
            if !canonical || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Param::Int(v.parse().ok()?)
        } else {
            Param::Text(plain_string(v)?.to_owned())
        };
        params.push((Cow::Borrowed(want), value));
    }
    if pieces.next().is_some() {
        return None;
    }
    Some(Raw {
        label: self::name(label),
        components,
        params,
        serialized: list.to_owned(),
        bytes,
    })
}

/// The general front end: both headers as RFC 8941 dictionaries.
fn general(headers: &HeaderMap) -> Result<Raw, SignError> {
    let no = SignError::NoSignature;
    let inputs = dictionary(headers, "signature-input")?.ok_or(no("Signature-Input"))?;
    let signatures = dictionary(headers, "signature")?.ok_or(no("Signature"))?;
    let Some((label, entry, sig)) = inputs
        .iter()
        .find_map(|(k, v)| signatures.get(k.as_str()).map(|s| (k.as_str(), v, s)))
    else {
        fail!(
            Malformed,
            "no label is present in both Signature-Input and Signature"
        )
    };
    let ListEntry::InnerList(inner) = entry else {
        fail!(Malformed, "Signature-Input {label:?} is not an inner list")
    };
    let ListEntry::Item(sig) = sig else {
        fail!(Malformed, "Signature {label:?} is not an item")
    };
    let bytes = sig
        .bare_item
        .as_byte_sequence()
        .unwrap_or_default()
        .to_vec();
    let mut components: Vec<Name> = Vec::new();
    for item in &inner.items {
        let name = item
            .bare_item
            .as_string()
            .map(StringRef::as_str)
            .unwrap_or_default();
        if !item.params.is_empty() {
            fail!(
                Malformed,
                "component {name:?} must be a quoted lowercase name, no parameters"
            );
        }
        components.push(self::name(name));
    }
    let params = inner
        .params
        .iter()
        .map(|(key, value)| {
            let v = match (value.as_string(), value.as_integer()) {
                (Some(t), _) => Param::Text(t.as_str().to_owned()),
                (_, Some(i)) => Param::Int(i64::from(i)),
                _ => Param::Other,
            };
            (self::name(key.as_str()), v)
        })
        .collect();
    let Some(serialized) = vec![entry.clone()].serialize() else {
        fail!(Malformed, "Signature-Input cannot be re-serialized")
    };
    Ok(Raw {
        label: self::name(label),
        components,
        params,
        serialized,
        bytes,
    })
}

impl Raw {
    /// The checks both front ends share: components, parameters, the signature's size.
    fn check(self) -> Result<ParsedSignature, SignError> {
        let Raw {
            label,
            components,
            params,
            serialized,
            bytes,
        } = self;
        if components.len() > MAX_COMPONENTS {
            fail!(
                Malformed,
                "{} components are covered, more than the {MAX_COMPONENTS} allowed",
                components.len()
            );
        }
        for (i, name) in components.iter().enumerate() {
            if !(name.starts_with('@') || is_field_name(name)) {
                fail!(
                    Malformed,
                    "component {name:?} must be a quoted lowercase name, no parameters"
                );
            }
            if components[..i].contains(name) {
                fail!(Malformed, "component {name:?} is covered twice");
            }
        }
        let (mut keyid, mut nonce, mut created, mut expires) = (None, None, None, None);
        let mut alg = Alg::Ed25519;
        for (key, value) in params {
            let time = match &value {
                Param::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            };
            let ok = match (key.as_ref(), value) {
                ("keyid", Param::Text(t)) => {
                    keyid = Some(t);
                    true
                }
                ("nonce", Param::Text(t)) => {
                    nonce = Some(t);
                    true
                }
                ("keyid" | "nonce", _) => false,
                ("created", _) => time.map(|t| created = Some(t)).is_some(),
                ("expires", _) => time.map(|t| expires = Some(t)).is_some(),
                ("alg", Param::Text(t)) if t == "ed25519" => {
                    alg = Alg::Ed25519;
                    true
                }
                ("alg", Param::Text(t)) if t == "hmac-sha256" => {
                    alg = Alg::HmacSha256;
                    true
                }
                ("alg", value) => {
                    let alg = match &value {
                        Param::Text(t) => t.as_str(),
                        _ => "(not a string)",
                    };
                    fail!(UnsupportedAlgorithm, "signature algorithm {alg:?} is not supported: sign with an ed25519 key and alg=\"ed25519\"")
                }
                _ => true,
            };
            if !ok {
                fail!(Malformed, "parameter {key} has the wrong type or range");
            }
        }
        let Some(keyid) = keyid else {
            fail!(Malformed, "Signature-Input has no keyid parameter")
        };
        let (signature, mac) = match alg {
            Alg::Ed25519 => match Signature::from_slice(&bytes) {
                Ok(s) => (s, None),
                Err(_) => fail!(
                    Malformed,
                    "Signature {label:?} is not a 64-byte ed25519 signature (:base64:)"
                ),
            },
            Alg::HmacSha256 => match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(tag) => (Signature::from_bytes(&[0; 64]), Some(tag)),
                Err(_) => fail!(
                    Malformed,
                    "Signature {label:?} is not a 32-byte HMAC-SHA256 tag (:base64:)"
                ),
            },
        };
        Ok(ParsedSignature {
            label,
            components,
            params: serialized,
            keyid,
            nonce,
            created,
            expires,
            alg,
            signature,
            mac,
        })
    }
}

/// Remembered pairs, by the second their signatures expire (each a 128-bit keyed
/// hash of `(keyid, nonce)`), and the second below which all were forgotten.
#[derive(Debug, Default)]
struct Seen {
    by_expiry: std::collections::BTreeMap<u64, rustc_hash::FxHashSet<u128>>,
    forgotten_below: u64,
}

/// How long a second's pairs are kept after it has passed, by default: a call
/// read before the second ended may still be on its way to the guard (a
/// directory lookup, the verifier's queue). One that takes longer is refused,
/// never let through. A guard that checks calls only after their bodies
/// arrive keeps them as long as a body may take ([`ReplayGuard::with_grace`]).
pub const KEEP_AFTER_SECS: u64 = 10;

/// Remembers `(keyid, nonce)` pairs until some seconds after their signature
/// expires, refusing a second use.
///
/// Pairs are kept by their signature's `expires`: a replay carries the same
/// `expires` (it is signed), so each check looks in one second's set, the few
/// hundred kilobytes that second's calls fill rather than one table of every call
/// of the last minute, which missed the cache on each of them. A second is
/// dropped whole a grace ([`KEEP_AFTER_SECS`] by default) after it passed, and any
/// signature expiring in a second already dropped is refused: whether it was
/// seen is no longer known. (So a wall clock stepped back by more than the
/// signature lifetime plus the grace makes calls wait until it has caught up; a
/// replay never gets through by it.) Memory stays bounded by the calls of the
/// longest signature lifetime and clock skew the checks before this one allow,
/// plus the grace.
///
/// A pair is kept as a 128-bit hash under two random SipHash keys of this process,
/// not as its strings: 16 bytes an entry instead of ~200, and no allocation per
/// call. Nobody outside knows the keys, so nobody can choose nonces that collide,
/// and two honest pairs collide with odds of about n²/2¹²⁹.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
    keys: (std::hash::RandomState, std::hash::RandomState),
    grace_secs: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_grace(KEEP_AFTER_SECS)
    }
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty guard that keeps a second's pairs `grace_secs` after it passed.
    pub fn with_grace(grace_secs: u64) -> Self {
        ReplayGuard {
            seen: Mutex::default(),
            keys: Default::default(),
            grace_secs,
        }
    }

    fn pair_hash(&self, keyid: &str, nonce: &str) -> u128 {
        use std::hash::{BuildHasher as _, Hasher as _};
        let one = |k: &std::hash::RandomState| {
            let mut h = k.build_hasher();
            h.write_usize(keyid.len());
            h.write(keyid.as_bytes());
            h.write(nonce.as_bytes());
            h.finish()
        };
        (u128::from(one(&self.keys.0)) << 64) | u128::from(one(&self.keys.1))
    }

    /// Fails with [`SignError::Replayed`] if `(keyid, nonce)` was recorded for a
    /// signature expiring at `expires` (and not yet forgotten), without
    /// recording it: a receiver refuses a known replay before reading its body,
    /// and records the pair only once the body matches (so a request whose body
    /// was tampered with cannot use up the nonce of the genuine one). Fails with
    /// [`SignError::Stale`] if the pairs of that second were already forgotten.
    pub fn check_unseen(
        &self,
        keyid: &str,
        nonce: &str,
        expires: u64,
        now: u64,
    ) -> Result<(), SignError> {
        let key = self.pair_hash(keyid, nonce);
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if expires
            < seen
                .forgotten_below
                .max(now.saturating_sub(self.grace_secs))
        {
            return Err(forgotten(expires));
        }
        if (seen.by_expiry.get(&expires)).is_some_and(|s| s.contains(&key)) {
            return Err(replayed(keyid, nonce));
        }
        Ok(())
    }

    /// Records `(keyid, nonce)` until the grace after `expires`; fails with
    /// [`SignError::Replayed`] if the pair was already recorded (and not yet
    /// forgotten), or [`SignError::Stale`] if the pairs of that second were
    /// already forgotten. Call it after a successful verify.
    pub fn check_and_remember(
        &self,
        keyid: &str,
        nonce: &str,
        expires: u64,
        now: u64,
    ) -> Result<(), SignError> {
        let key = self.pair_hash(keyid, nonce);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let keep_from = now.saturating_sub(self.grace_secs);
        while let Some(second) = seen.by_expiry.first_entry() {
            if *second.key() >= keep_from {
                break;
            }
            second.remove();
        }
        seen.forgotten_below = seen.forgotten_below.max(keep_from);
        if expires < seen.forgotten_below {
            return Err(forgotten(expires));
        }
        if !seen.by_expiry.entry(expires).or_default().insert(key) {
            return Err(replayed(keyid, nonce));
        }
        Ok(())
    }
}

fn replayed(keyid: &str, nonce: &str) -> SignError {
    SignError::Replayed(format!("nonce {nonce:?} of keyid {keyid:?} was already used, so this is a replay: sign every request anew, which gives it a fresh nonce"))
}

fn forgotten(expires: u64) -> SignError {
    SignError::Stale(format!("the signature expired at {expires} (unix), too long ago to tell whether it was used before: sign the request again"))
}

/// Why signing or verification failed; the message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The named signature header is absent.
    #[error("request is not signed: the {0} header is missing; sign it (RFC 9421) with your key")]
    NoSignature(&'static str),
    /// The signature headers (or `Content-Digest`) are not valid for this profile.
    #[error("malformed signature: {0}; send the headers exactly as the signer produced them")]
    Malformed(String),
    /// The signature does not verify for this request and key.
    #[error("{0}")]
    BadSignature(String),
    /// `Content-Digest` is missing or does not match the body.
    #[error("{0}")]
    ChangedBody(String),
    /// Expired, too old, too far in the future, or too long-lived.
    #[error("{0}")]
    Stale(String),
    /// The nonce was already used.
    #[error("{0}")]
    Replayed(String),
    /// A required component or parameter is not covered.
    #[error("{0}")]
    MissingComponent(String),
    /// `alg` (or the digest algorithm) is not one this profile accepts.
    #[error("{0}")]
    UnsupportedAlgorithm(String),
}

impl SignError {
    /// A stable kebab-case reason code for logs, metrics and JSON errors.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoSignature(_) => "no-signature",
            Self::Malformed(_) => "malformed-signature",
            Self::BadSignature(_) => "bad-signature",
            Self::ChangedBody(_) => "changed-body",
            Self::Stale(_) => "stale-signature",
            Self::Replayed(_) => "replayed",
            Self::MissingComponent(_) => "missing-component",
            Self::UnsupportedAlgorithm(_) => "unsupported-algorithm",
        }
    }
}

fn header_value(value: &str) -> Result<HeaderValue, SignError> {
    HeaderValue::from_str(value).map_err(|_| SignError::Malformed("bad header value".into()))
}

/// [`header_value`] for text made here: its buffer becomes the value, uncopied.
fn owned_header_value(value: String) -> Result<HeaderValue, SignError> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value.into_bytes()))
        .map_err(|_| SignError::Malformed("bad header value".into()))
}

/// The header's field lines, trimmed and joined with ", "; `None` when absent.
fn joined(headers: &HeaderMap, name: &str) -> Result<Option<String>, SignError> {
    let mut lines = Vec::new();
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else {
            fail!(Malformed, "header {name} is not ASCII")
        };
        lines.push(text.trim_matches([' ', '\t']));
    }
    Ok((!lines.is_empty()).then(|| lines.join(", ")))
}

fn dictionary(headers: &HeaderMap, name: &str) -> Result<Option<Dictionary>, SignError> {
    let Some(text) = joined(headers, name)? else {
        return Ok(None);
    };
    match Parser::new(&text)
        .with_version(Version::Rfc8941)
        .parse::<Dictionary>()
    {
        Ok(dict) => Ok(Some(dict)),
        Err(e) => fail!(
            Malformed,
            "header {name} is not an RFC 8941 dictionary ({e})"
        ),
    }
}

/// The serialized inner list with parameters: the `@signature-params` value (RFC 9421 §2.3),
/// written as RFC 8941 serializes it (the components are lowercase names; `nonce` and
/// `keyid` must be printable ASCII, and `"` and `\` are escaped).
#[cfg(test)]
fn signature_params(
    components: &[&str],
    created: u64,
    expires: u64,
    nonce: &str,
    keyid: &str,
    alg: Alg,
) -> Result<String, SignError> {
    let mut out = String::with_capacity(160 + keyid.len());
    push_signature_params(&mut out, components, created, expires, nonce, keyid, alg)?;
    Ok(out)
}

/// Appends the `@signature-params` value to `out`.
fn push_signature_params(
    out: &mut String,
    components: &[&str],
    created: u64,
    expires: u64,
    nonce: &str,
    keyid: &str,
    alg: Alg,
) -> Result<(), SignError> {
    use std::fmt::Write as _;
    const MAX_INT: u64 = 999_999_999_999_999;
    let bad = |what: &str| SignError::Malformed(format!("cannot sign: {what}"));
    if components.is_empty() {
        return Err(bad("no components"));
    }
    if created > MAX_INT || expires > MAX_INT {
        return Err(bad("the time is out of range"));
    }
    out.push('(');
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_string(out, c).ok_or_else(|| bad("a component name must be printable ASCII"))?;
    }
    let _ = write!(out, ");created={created};expires={expires};nonce=");
    push_string(out, nonce).ok_or_else(|| bad("the nonce must be printable ASCII"))?;
    out.push_str(";keyid=");
    push_string(out, keyid).ok_or_else(|| bad("keyid must be printable ASCII"))?;
    out.push_str(";alg=");
    push_string(out, alg.name()).ok_or_else(|| bad("alg must be printable ASCII"))?;
    Ok(())
}

/// Appends `v` as an RFC 8941 string (§4.1.6); `None` unless printable ASCII.
fn push_string(out: &mut String, v: &str) -> Option<()> {
    if !v.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return None;
    }
    out.push('"');
    if v.bytes().any(|b| b == b'"' || b == b'\\') {
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    } else {
        out.push_str(v);
    }
    out.push('"');
    Some(())
}

/// The `@authority` a request's signature covers (RFC 9421 §2.2.3): its `Host`
/// header, or the authority of an absolute-form target, lowercased; `None` when it
/// has neither, or several `Host` headers (which no signature verifies over).
pub fn authority(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let mut hosts = headers.get_all(HOST).iter();
    let value = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().ok()?.trim_matches([' ', '\t']).to_owned(),
        (None, _) => uri.authority()?.as_str().to_owned(),
        (Some(_), Some(_)) => return None,
    };
    Some(value.to_ascii_lowercase())
}

/// The RFC 9421 §2.5 signature base: one `"name": value` line per component, then
/// `"@signature-params": params`, joined by "\n" without a trailing newline.
fn signature_base<S: AsRef<str>>(
    components: &[S],
    params: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, SignError> {
    // One buffer, each value written straight into it: this runs twice per call
    // between hosts (to sign, to verify).
    let mut base = String::with_capacity(256 + params.len());
    for name in components.iter().map(AsRef::as_ref) {
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        match name {
            "@method" => base.push_str(method.as_str()),
            "@authority" if headers.get_all(HOST).iter().count() > 1 => {
                fail!(Malformed, "the request has several Host headers")
            }
            "@authority" => {
                let start = base.len();
                match (
                    push_joined(&mut base, headers, HOST.as_str())?,
                    uri.authority(),
                ) {
                    (true, _) => {}
                    (false, Some(authority)) => base.push_str(authority.as_str()),
                    (false, None) => fail!(
                        BadSignature,
                        "the request has no Host header, which the signature covers"
                    ),
                }
                base[start..].make_ascii_lowercase();
            }
            "@path" if uri.path().is_empty() => base.push('/'),
            "@path" => base.push_str(uri.path()),
            "@query" => {
                base.push('?');
                base.push_str(uri.query().unwrap_or_default());
            }
            _ if name.starts_with('@') => fail!(Malformed, "component {name:?} is not supported"),
            _ => {
                if !push_joined(&mut base, headers, name)? {
                    fail!(BadSignature, "the request has no {name} header, which the signature covers: send it as it was signed")
                }
            }
        }
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params);
    Ok(base)
}

/// Appends the values of header `name` to `out` as `joined` gives them; false
/// when the request has no such header.
fn push_joined(out: &mut String, headers: &HeaderMap, name: &str) -> Result<bool, SignError> {
    let mut any = false;
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else {
            fail!(Malformed, "header {name} is not ASCII")
        };
        if any {
            out.push_str(", ");
        }
        out.push_str(text.trim_matches([' ', '\t']));
        any = true;
    }
    Ok(any)
}

fn check_times(created: u64, expires: u64, now: u64, policy: &Policy) -> Result<(), SignError> {
    let (skew, max) = (policy.max_skew_secs, policy.max_lifetime_secs);
    if expires
        .checked_sub(created)
        .is_none_or(|lifetime| lifetime > max)
    {
        fail!(Stale, "signature lifetime from created {created} to expires {expires} is not within 0..={max}s: sign with expires at most {max}s after created");
    }
    if created > now.saturating_add(skew) {
        fail!(Stale, "signature created {}s in the future, beyond the {skew}s allowed clock skew: fix the signer's clock and sign again", created - now);
    }
    if now > expires {
        fail!(
            Stale,
            "signature expired {}s ago: sign the request again with a fresh created/expires",
            now - expires
        );
    }
    let (age, oldest) = (now.saturating_sub(created), max.saturating_add(skew));
    if age > oldest {
        fail!(
            Stale,
            "signature created {age}s ago, more than the {oldest}s allowed: sign the request again"
        );
    }
    Ok(())
}

fn check_digest(headers: &HeaderMap, body: &BodyHash) -> Result<(), SignError> {
    // As `BodyHash::content_digest` writes it, and matching: no need of the
    // RFC 8941 parser, which says what is wrong with anything else.
    let matches = |v: &str| {
        let mut claimed = [0u8; 33];
        v.strip_prefix("sha-256=:")
            .and_then(|v| v.strip_suffix(':'))
            .and_then(|b64| STANDARD.decode_slice(b64, &mut claimed).ok())
            .is_some_and(|n| claimed[..n] == body.sha256)
    };
    if one_line(headers, DIGEST).is_some_and(matches) {
        return Ok(());
    }
    check_digest_general(headers, body)
}

/// [`check_digest`] by the RFC 8941 parser alone.
fn check_digest_general(headers: &HeaderMap, body: &BodyHash) -> Result<(), SignError> {
    let Some(dict) = dictionary(headers, DIGEST)? else {
        fail!(
            ChangedBody,
            "the request has a body but no Content-Digest: sign it with its body"
        )
    };
    let claimed = match dict.get("sha-256") {
        Some(ListEntry::Item(item)) => item.bare_item.as_byte_sequence(),
        Some(ListEntry::InnerList(_)) => None,
        None => fail!(
            UnsupportedAlgorithm,
            "Content-Digest has no sha-256 digest: send sha-256=:BASE64:"
        ),
    };
    if claimed != Some(body.sha256.as_slice()) {
        fail!(ChangedBody, "Content-Digest does not match the {}-byte body received: the body changed after signing; sign the exact bytes you send", body.len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rand::{Rng, SeedableRng};

    // RFC 9421 Appendix B.1.4 `test-key-ed25519`.
    const RFC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
    const RFC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
    // RFC 9421 Appendix B.2: the test-request body, its sha-512 Content-Digest, B.2.6's signature.
    const BODY: &[u8] = br#"{"hello": "world"}"#;
    const SHA512: &str =
        "WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==";
    const B26_SIG: &str =
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";
    const B26_PARAMS: &str = r#"("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    const NOW: u64 = 1_700_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn rfc9421_b26_ed25519_vector() {
        let key = SigningKey::from_pkcs8_pem(RFC_PRIVATE).unwrap();
        let public = VerifyingKey::from_public_key_pem(RFC_PUBLIC).unwrap();
        assert_eq!(key.verifying_key(), public);
        let uri: Uri = "/foo?param=Value&Pet=dog".parse().unwrap();
        let h = headers(&[
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            ("content-digest", &format!("sha-512=:{SHA512}:")),
            ("content-length", "18"),
            ("signature-input", &format!("sig-b26={B26_PARAMS}")),
            ("signature", &format!("sig-b26=:{B26_SIG}:")),
        ]);
        let parsed = parse(&h).unwrap();
        assert_eq!(
            (parsed.label(), parsed.keyid()),
            ("sig-b26", "test-key-ed25519")
        );
        let base = signature_base(&parsed.components, &parsed.params, &Method::POST, &uri, &h);
        let expected = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\
            \"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\
            \"content-length\": 18\n\"@signature-params\": ";
        assert_eq!(base.unwrap(), format!("{expected}{B26_PARAMS}"));
        let signed = key.sign(format!("{expected}{B26_PARAMS}").as_bytes());
        assert_eq!(STANDARD.encode(signed.to_bytes()), B26_SIG);
        parsed
            .verify_signature(&Method::POST, &uri, &h, &public)
            .unwrap();
        let wrong = parsed.verify_signature(&Method::PUT, &uri, &h, &public);
        assert_eq!(wrong.unwrap_err().reason(), "bad-signature");
        // Valid per the RFC, but short of this profile (no @query, nonce or expires).
        let policy = Policy::default();
        let err = parsed.verify(&Method::POST, &uri, &h, BODY, &public, 1618884473, &policy);
        assert_eq!(err.unwrap_err().reason(), "missing-component");
        assert_eq!(
            fingerprint(&public),
            "wfwc2g7k2etcmolwj7nq5zgto5czsm3l2sjuatg2jmitnrm7ebra"
        );
    }

    #[test]
    fn rfc9530_content_digest() {
        let digest = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
        assert_eq!(content_digest(BODY), digest);
        assert_eq!(STANDARD.encode(sha2::Sha512::digest(BODY)), SHA512);
        check_digest(&headers(&[(DIGEST, digest)]), &BodyHash::of(BODY)).unwrap();
        let changed =
            check_digest(&headers(&[(DIGEST, digest)]), &BodyHash::of(b"{}")).unwrap_err();
        assert_eq!(changed.reason(), "changed-body");
        let other = check_digest(
            &headers(&[(DIGEST, &format!("sha-512=:{SHA512}:"))]),
            &BodyHash::of(BODY),
        );
        assert_eq!(other.unwrap_err().reason(), "unsupported-algorithm");
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// Signs as the CLI would (absolute URI, no Host); returns what the server sees.
    fn signed(method: Method, body: &[u8]) -> (Method, Uri, HeaderMap) {
        let client_uri: Uri = "http://Admin.Example:8080/v1/records?zone=a"
            .parse()
            .unwrap();
        let mut h = HeaderMap::new();
        let signer = Signer {
            key: &key(),
            keyid: "k1",
        };
        signer
            .sign(&method, &client_uri, &mut h, body, NOW)
            .unwrap();
        (method, "/v1/records?zone=a".parse().unwrap(), h)
    }

    fn check(m: &Method, u: &Uri, h: &HeaderMap, body: &[u8], now: u64) -> &'static str {
        let policy = Policy::default();
        let result =
            parse(h).and_then(|p| p.verify(m, u, h, body, &key().verifying_key(), now, &policy));
        result.map_or_else(|e| e.reason(), |()| "ok")
    }

    #[test]
    fn round_trip() {
        let (m, u, h) = signed(Method::POST, BODY);
        assert_eq!(
            (h["host"].as_bytes(), h[DIGEST].as_bytes()),
            (&b"Admin.Example:8080"[..], content_digest(BODY).as_bytes())
        );
        let input = h["signature-input"].to_str().unwrap();
        let covered = r#"sig1=("@method" "@authority" "@path" "@query" "content-digest")"#;
        assert!(input.starts_with(&format!(
            "{covered};created={NOW};expires={};nonce=\"",
            NOW + 60
        )));
        assert!(input.ends_with(";keyid=\"k1\";alg=\"ed25519\""));
        let parsed = parse(&h).unwrap();
        assert_eq!(
            (parsed.keyid(), parsed.nonce().len(), parsed.expires()),
            ("k1", 22, NOW + 60)
        );
        assert_eq!(check(&m, &u, &h, BODY, NOW), "ok");
        assert_eq!(check(&m, &u, &h, BODY, NOW + 60), "ok");
        assert_eq!(authority(&u, &h).as_deref(), Some("admin.example:8080"));
        let absolute: Uri = "http://Other.Example/x".parse().unwrap();
        assert_eq!(
            authority(&absolute, &HeaderMap::new()).as_deref(),
            Some("other.example")
        );
        let mut twice = h.clone();
        twice.append(HOST, HeaderValue::from_static("evil.example"));
        assert_eq!(authority(&u, &twice), None);
        let (m, u, h) = signed(Method::GET, b"");
        assert!(!h.contains_key(DIGEST));
        assert_eq!(check(&m, &u, &h, b"", NOW), "ok");
        assert_eq!(check(&m, &u, &h, b"x", NOW), "missing-component");
        assert_ne!(
            parse(&signed(Method::GET, b"").2).unwrap().nonce(),
            parse(&h).unwrap().nonce()
        );
    }

    #[test]
    fn refusals() {
        let (m, u, h) = signed(Method::POST, BODY);
        assert_eq!(
            check(&m, &u, &h, br#"{"hello": "mars"}"#, NOW),
            "changed-body"
        );
        assert_eq!(check(&Method::PUT, &u, &h, BODY, NOW), "bad-signature");
        for tampered in ["/v1/other?zone=a", "/v1/records?zone=b", "/v1/records"] {
            assert_eq!(
                check(&m, &tampered.parse().unwrap(), &h, BODY, NOW),
                "bad-signature"
            );
        }
        let mut moved = h.clone();
        moved.insert(HOST, HeaderValue::from_static("evil.example:8080"));
        assert_eq!(check(&m, &u, &moved, BODY, NOW), "bad-signature");
        let mut forged = h.clone();
        forged.insert(
            DIGEST,
            HeaderValue::from_str(&content_digest(b"evil")).unwrap(),
        );
        assert_eq!(check(&m, &u, &forged, b"evil", NOW), "bad-signature");
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let wrong = parse(&h)
            .unwrap()
            .verify(&m, &u, &h, BODY, &other, NOW, &Policy::default());
        assert_eq!(wrong.unwrap_err().reason(), "bad-signature");
        let expired = parse(&h).unwrap().verify(
            &m,
            &u,
            &h,
            BODY,
            &key().verifying_key(),
            NOW + 72,
            &Policy::default(),
        );
        let message = expired.unwrap_err().to_string();
        assert!(message.starts_with("signature expired 12s ago: sign the request again"));
        assert_eq!(check(&m, &u, &h, BODY, NOW - 30), "ok");
        assert_eq!(check(&m, &u, &h, BODY, NOW - 31), "stale-signature");
    }

    #[test]
    fn profile_refusals() {
        let all = ["@method", "@authority", "@path", "@query", DIGEST];
        let no_query = ["@method", "@authority", "@path", DIGEST];
        let p = |expires: u64, rest: &str| format!("created={NOW};expires={expires}{rest}");
        const N: &str = ";nonce=\"n\";keyid=\"k1\"";
        let cases: [(&[&str], String, &str); 8] = [
            (&all, p(NOW + 61, N), "stale-signature"),
            (&all, p(NOW - 1, N), "stale-signature"),
            (&all, p(NOW + 60, ";keyid=\"k1\""), "missing-component"),
            (
                &all,
                format!("expires={}{N}", NOW + 60),
                "missing-component",
            ),
            (&all[..4], p(NOW + 60, N), "missing-component"),
            (&no_query, p(NOW + 60, N), "missing-component"),
            (
                &all,
                p(NOW + 60, &format!("{N};alg=\"rsa-pss-sha512\"")),
                "unsupported-algorithm",
            ),
            (
                &all,
                p(NOW + 60, &format!("{N};alg=\"ed25519\";tag=\"t\"")),
                "ok",
            ),
        ];
        for (components, params, want) in cases {
            let list: Vec<_> = components.iter().map(|c| format!("\"{c}\"")).collect();
            let params = format!("({});{params}", list.join(" "));
            let uri: Uri = "/v1/records?zone=a".parse().unwrap();
            let mut h = headers(&[("host", "admin.example"), (DIGEST, &content_digest(BODY))]);
            let base = signature_base(components, &params, &Method::POST, &uri, &h).unwrap();
            let sig = STANDARD.encode(key().sign(base.as_bytes()).to_bytes());
            h.insert("signature-input", format!("sig1={params}").parse().unwrap());
            h.insert("signature", format!("sig1=:{sig}:").parse().unwrap());
            assert_eq!(check(&Method::POST, &uri, &h, BODY, NOW), want, "{params}");
        }
    }

    #[test]
    fn hmac_session_signatures() {
        let key = [3u8; 32];
        let client_uri: Uri = "http://10.0.0.2:7443/api/x?y=1".parse().unwrap();
        let mut h = HeaderMap::new();
        let signer = HmacSigner {
            key: &key,
            keyid: "sess1",
        };
        let hash = BodyHash::of(BODY);
        signer
            .sign_hashed(&Method::POST, &client_uri, &mut h, &hash, NOW)
            .unwrap();
        let input = h["signature-input"].to_str().unwrap();
        assert!(
            input.ends_with(";keyid=\"sess1\";alg=\"hmac-sha256\""),
            "{input}"
        );
        let u: Uri = "/api/x?y=1".parse().unwrap();
        let p = parse(&h).unwrap();
        assert_eq!((p.alg(), p.keyid()), (Alg::HmacSha256, "sess1"));
        let policy = Policy::default();
        let check = |m: &Method, u: &Uri, h: &HeaderMap, k: &[u8; 32], now: u64| {
            parse(h)
                .and_then(|p| p.verify_hmac_headers(m, u, h, true, k, now, &policy))
                .map_or_else(|e| e.reason(), |()| "ok")
        };
        assert_eq!(check(&Method::POST, &u, &h, &key, NOW), "ok");
        p.check_body(&h, &hash).unwrap();
        assert_eq!(
            p.check_body(&h, &BodyHash::of(b"x")).unwrap_err().reason(),
            "changed-body"
        );
        assert_eq!(check(&Method::PUT, &u, &h, &key, NOW), "bad-signature");
        assert_eq!(check(&Method::POST, &u, &h, &[4; 32], NOW), "bad-signature");
        let other: Uri = "/api/x?y=2".parse().unwrap();
        assert_eq!(check(&Method::POST, &other, &h, &key, NOW), "bad-signature");
        let mut moved = h.clone();
        moved.insert(HOST, HeaderValue::from_static("10.0.0.3:7443"));
        assert_eq!(check(&Method::POST, &u, &moved, &key, NOW), "bad-signature");
        assert_eq!(
            check(&Method::POST, &u, &h, &key, NOW + 61),
            "stale-signature"
        );
        // An ed25519 key never accepts an HMAC signature, nor the reverse.
        let as_ed = p.verify(
            &Method::POST,
            &u,
            &h,
            BODY,
            &SigningKey::from_bytes(&[7; 32]).verifying_key(),
            NOW,
            &policy,
        );
        assert_eq!(as_ed.unwrap_err().reason(), "unsupported-algorithm");
        let (m, u2, h2) = signed(Method::POST, BODY);
        assert_eq!(check(&m, &u2, &h2, &key, NOW), "unsupported-algorithm");
        // A tag of the wrong length.
        let mut short = h.clone();
        short.insert("signature", HeaderValue::from_static("sig1=:AAAA:"));
        assert_eq!(
            check(&Method::POST, &u, &short, &key, NOW),
            "malformed-signature"
        );
    }

    #[test]
    fn a_request_signed_from_its_parts_verifies_as_one_signed_in_a_header_map() {
        let key = [3u8; 32];
        let hmac = HmacSigner {
            key: &key,
            keyid: "sess1",
        };
        let ed = SigningKey::from_bytes(&[7; 32]);
        let ed_signer = Signer {
            key: &ed,
            keyid: "k",
        };
        let policy = Policy::default();
        let u: Uri = "/api/x?y=1".parse().unwrap();
        for body in [&b""[..], BODY] {
            let hash = BodyHash::of(body);
            // The authority is sent as it is and signed lowercased, as a verifier reads it.
            let covered = Covered {
                method: "POST",
                authority: "Repo1.Example:7443",
                path: "/api/x",
                query: Some("y=1"),
            };
            let headers = |s: SignatureHeaders| {
                let mut h = HeaderMap::new();
                h.insert(HOST, HeaderValue::from_static("Repo1.Example:7443"));
                if let Some(d) = s.content_digest {
                    h.insert(DIGEST, HeaderValue::from_str(&d).unwrap());
                }
                h.insert(
                    "signature-input",
                    HeaderValue::from_str(&s.signature_input).unwrap(),
                );
                h.insert("signature", HeaderValue::from_str(&s.signature).unwrap());
                h
            };
            let h = headers(hmac.sign_covered(&covered, &hash, NOW).unwrap());
            assert_eq!(h.contains_key(DIGEST), !body.is_empty());
            let p = parse(&h).unwrap();
            let expects_body = !body.is_empty();
            p.verify_hmac_headers(&Method::POST, &u, &h, expects_body, &key, NOW, &policy)
                .unwrap();
            p.check_body(&h, &hash).unwrap();
            let other: Uri = "/api/x?y=2".parse().unwrap();
            let e =
                p.verify_hmac_headers(&Method::POST, &other, &h, expects_body, &key, NOW, &policy);
            assert_eq!(e.unwrap_err().reason(), "bad-signature");
            let h = headers(ed_signer.sign_covered(&covered, &hash, NOW).unwrap());
            let p = parse(&h).unwrap();
            p.verify(
                &Method::POST,
                &u,
                &h,
                body,
                &ed.verifying_key(),
                NOW,
                &policy,
            )
            .unwrap();
        }
        // UTF-8 in a path is signed, as httparse and `http` take it.
        let u: Uri = "/api/\u{e9}t\u{e9}".parse().unwrap();
        let covered = Covered {
            method: "POST",
            authority: "a",
            path: u.path(),
            query: None,
        };
        let s = hmac
            .sign_covered(&covered, &BodyHash::of(b""), NOW)
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("a"));
        h.insert(
            "signature-input",
            HeaderValue::from_str(&s.signature_input).unwrap(),
        );
        h.insert("signature", HeaderValue::from_str(&s.signature).unwrap());
        let p = parse(&h).unwrap();
        p.verify_hmac_headers(&Method::POST, &u, &h, false, &key, NOW, &policy)
            .unwrap();
        // Nothing that would end a line or split the request line is signed.
        for (authority, path) in [("a\r\nx: y", "/p"), ("a", "/p q"), ("a", "/p\r\nx: y")] {
            let covered = Covered {
                method: "POST",
                authority,
                path,
                query: None,
            };
            let e = hmac.sign_covered(&covered, &BodyHash::of(b""), NOW);
            assert_eq!(
                e.unwrap_err().reason(),
                "malformed-signature",
                "{authority:?} {path:?}"
            );
        }
    }

    #[test]
    fn fingerprints_have_one_form() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let fp = fingerprint(&key);
        assert!(is_fingerprint(&fp), "{fp}");
        assert!(!is_fingerprint(&fp.to_ascii_uppercase()));
        assert!(!is_fingerprint(&fp[1..]));
        assert!(!is_fingerprint(&format!("{}1", &fp[1..])));
        assert!(!is_fingerprint(""));
    }

    #[test]
    fn replay_guard() {
        fn shareable<T: Send + Sync>(value: T) -> T {
            value
        }
        let guard = shareable(ReplayGuard::new());
        fn unseen(
            g: &ReplayGuard,
            k: &str,
            n: &str,
            expires: u64,
            now: u64,
        ) -> Result<(), &'static str> {
            g.check_unseen(k, n, expires, now).map_err(|e| e.reason())
        }
        fn remember(
            g: &ReplayGuard,
            k: &str,
            n: &str,
            exp: u64,
            now: u64,
        ) -> Result<(), &'static str> {
            g.check_and_remember(k, n, exp, now).map_err(|e| e.reason())
        }
        assert_eq!(unseen(&guard, "k1", "n1", NOW + 60, NOW), Ok(()));
        assert_eq!(unseen(&guard, "k1", "n1", NOW + 60, NOW), Ok(()));
        assert_eq!(remember(&guard, "k1", "n1", NOW + 60, NOW), Ok(()));
        assert_eq!(
            unseen(&guard, "k1", "n1", NOW + 60, NOW + 5),
            Err("replayed")
        );
        // Past its expiry, still known until its second is dropped.
        assert_eq!(
            unseen(&guard, "k1", "n1", NOW + 60, NOW + 61),
            Err("replayed")
        );
        assert_eq!(
            remember(&guard, "k1", "n1", NOW + 60, NOW + 5),
            Err("replayed")
        );
        assert_eq!(remember(&guard, "k2", "n1", NOW + 60, NOW), Ok(()));
        assert_eq!(remember(&guard, "k1", "n2", NOW + 60, NOW), Ok(()));
        // The pair is hashed with its boundary: ("k1n", "1") is another pair.
        assert_eq!(remember(&guard, "k1n", "1", NOW + 60, NOW), Ok(()));
        for i in 0..3000 {
            assert_eq!(remember(&guard, "k", &i.to_string(), NOW + 60, NOW), Ok(()));
        }
        for i in 0..1100 {
            let n = i.to_string();
            assert_eq!(remember(&guard, "later", &n, NOW + 200, NOW + 100), Ok(()));
        }
        let kept: usize = (guard.seen.lock().unwrap().by_expiry.values())
            .map(|s| s.len())
            .sum();
        assert_eq!(kept, 1100, "expired entries are pruned");
        // A call read before its second passed, reaching the guard after
        // another call had that second dropped, is refused, not let through.
        let stale = Err("stale-signature");
        assert_eq!(remember(&guard, "k", "0", NOW + 60, NOW + 100), stale);
        assert_eq!(unseen(&guard, "k", "0", NOW + 60, NOW + 100), stale);
        // Within the grace a second is still kept: its pairs are still refused.
        let fresh = ReplayGuard::new();
        assert_eq!(remember(&fresh, "k", "n", NOW, NOW - 1), Ok(()));
        assert_eq!(remember(&fresh, "x", "y", NOW + 60, NOW + 5), Ok(()));
        assert_eq!(remember(&fresh, "k", "n", NOW, NOW), Err("replayed"));
        // A guard that remembers calls once their bodies have arrived keeps
        // seconds as long as a body may take.
        let slow = ReplayGuard::with_grace(200);
        assert_eq!(unseen(&slow, "k", "n", NOW + 60, NOW), Ok(()));
        assert_eq!(remember(&slow, "x", "y", NOW + 300, NOW + 240), Ok(()));
        assert_eq!(remember(&slow, "k", "n", NOW + 60, NOW + 250), Ok(()));
        assert_eq!(
            remember(&slow, "k", "n", NOW + 60, NOW + 250),
            Err("replayed")
        );
        assert_eq!(remember(&slow, "k", "m", NOW + 60, NOW + 261), stale);
        guard
            .check_and_remember("k1", "n1", NOW + 160, NOW + 100)
            .unwrap();
    }

    #[test]
    fn missing_and_garbage_headers() {
        let (m, u, h) = signed(Method::POST, BODY);
        assert_eq!(check(&m, &u, &HeaderMap::new(), BODY, NOW), "no-signature");
        let mut only_input = h.clone();
        only_input.remove("signature");
        assert_eq!(check(&m, &u, &only_input, BODY, NOW), "no-signature");
        let sig = h["signature"].to_str().unwrap();
        let input = h["signature-input"].to_str().unwrap();
        let scheme = input.replace("(\"@method\"", "(\"@scheme\" \"@method\"");
        let garbage = [
            ("sig1=(((", sig),
            (input, "sig1=:!!!:"),
            (input, "sig1=:AAAA:"),
            (input, "sig2=:AAAA:"),
            (input, "sig1=(:AAAA:)"),
            ("sig1=\"@method\"", sig),
            ("sig1=(\"Content-Digest\");keyid=\"k\"", sig),
            ("sig1=(\"@method\" \"@method\");keyid=\"k\"", sig),
            ("sig1=(\"@method\");keyid=k", sig),
            ("sig1=(\"@method\");created=-1;keyid=\"k\"", sig),
            ("sig1=(\"@method\")", sig),
            (&scheme, sig),
            ("", ""),
        ];
        for (input, sig) in garbage {
            let bad = headers(&[("signature-input", input), ("signature", sig)]);
            assert_eq!(
                check(&m, &u, &bad, BODY, NOW),
                "malformed-signature",
                "{input} {sig}"
            );
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9421);
        let (m, u, h) = signed(Method::POST, BODY);
        let seeds = [h["signature-input"].as_bytes(), h["signature"].as_bytes()];
        let alphabet = b"sig1=():;\"*?@, \t-abcz09:/+=\\%\x7f\x80\xff";
        for round in 0..20_000 {
            let mut map = HeaderMap::new();
            for (name, seed) in ["signature-input", "signature"].into_iter().zip(seeds) {
                let mut value = seed.to_vec();
                if round % 3 == 0 {
                    value = (0..rng.gen_range(0..64)).map(|_| rng.gen::<u8>()).collect();
                }
                for _ in 0..rng.gen_range(1..6) {
                    let at = rng.gen_range(0..=value.len());
                    let byte = alphabet[rng.gen_range(0..alphabet.len())];
                    match rng.gen_range(0..3) {
                        0 => value.insert(at, byte),
                        1 if at < value.len() => value[at] = byte,
                        _ if at < value.len() => drop(value.remove(at)),
                        _ => {}
                    }
                }
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.insert(name, value);
                }
            }
            let _ = check(&m, &u, &map, BODY, NOW);
        }
    }
}

#[cfg(test)]
mod fast_path {
    #[test]
    fn field_names_are_what_http_takes_in_lowercase() {
        let mut names: Vec<String> = (0u8..=127).map(|b| char::from(b).to_string()).collect();
        names.extend(
            [
                "content-digest",
                "x-a_b.c~",
                "Host",
                "",
                "a b",
                "é",
                "ab\u{7f}",
            ]
            .map(String::from),
        );
        for name in names {
            let http =
                http::HeaderName::from_bytes(name.as_bytes()).is_ok_and(|h| h.as_str() == name);
            assert_eq!(is_field_name(&name), http, "{name:?}");
        }
    }

    #[test]
    fn the_digest_fast_path_agrees_with_the_dictionary_parser() {
        let body = BodyHash::of(b"repository=hop");
        let good = STANDARD.encode(body.sha256);
        let other = STANDARD.encode(BodyHash::of(b"x").sha256);
        let unpadded = good.trim_end_matches('=').to_string();
        for value in [
            body.content_digest(),
            format!("  sha-256=:{good}:\t"),
            format!("sha-256=:{other}:"),
            format!("sha-256=:{unpadded}:"),
            format!("sha-256=:{good}:;p=1"),
            format!("sha-512=:{other}:, sha-256=:{good}:"),
            format!("sha-256=:{good}:, sha-256=:{other}:"),
            format!("sha-256=:{good}{good}:"),
            format!("sha-256=\"{good}\""),
            "sha-256=::".to_string(),
            "sha-256=:!!:".to_string(),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                DIGEST,
                HeaderValue::from_str(&value).expect("a header value"),
            );
            let fast = check_digest(&h, &body).map_err(|e| e.to_string());
            let general = check_digest_general(&h, &body).map_err(|e| e.to_string());
            assert_eq!(fast, general, "{value:?}");
        }
        let mut two = HeaderMap::new();
        two.append(DIGEST, HeaderValue::from_static("sha-512=:AA==:"));
        two.append(
            DIGEST,
            HeaderValue::from_str(&body.content_digest()).expect("a header value"),
        );
        assert_eq!(
            check_digest(&two, &body).map_err(|e| e.to_string()),
            check_digest_general(&two, &body).map_err(|e| e.to_string())
        );
    }

    #[test]
    fn long_signature_headers_and_many_components_are_refused_before_any_work() {
        let mut h = HeaderMap::new();
        let many: Vec<String> = (0..40).map(|i| format!("\"x-h{i}\"")).collect();
        let input = format!(
            "sig1=({});created=1;expires=2;nonce=\"n\";keyid=\"k\";alg=\"ed25519\"",
            many.join(" ")
        );
        h.insert(
            "signature-input",
            HeaderValue::from_str(&input).expect("a header value"),
        );
        h.insert("signature", HeaderValue::from_static("sig1=::"));
        let e = parse(&h).expect_err("40 components");
        assert!(e.to_string().contains("more than the 32 allowed"), "{e}");
        let long = format!(
            "sig1=(\"@method\" \"{}\");created=1;expires=2;nonce=\"n\";keyid=\"k\";alg=\"ed25519\"",
            "a".repeat(5000)
        );
        h.insert(
            "signature-input",
            HeaderValue::from_str(&long).expect("a header value"),
        );
        let e = parse(&h).expect_err("5 KB");
        assert!(e.to_string().contains("more than the 4096"), "{e}");
    }

    use super::*;
    use sfv::{key_ref, Integer, ListSerializer};

    /// What sfv's serializer writes for the same parameters.
    fn by_sfv(components: &[&str], created: u64, expires: u64, nonce: &str, keyid: &str) -> String {
        let s = |v| StringRef::from_str(v).unwrap();
        let i = |v: u64| Integer::try_from(v).unwrap();
        let mut list = ListSerializer::new();
        let mut inner = list.inner_list();
        for c in components {
            let _ = inner.bare_item(s(c));
        }
        let _ = inner
            .finish()
            .parameter(key_ref("created"), i(created))
            .parameter(key_ref("expires"), i(expires))
            .parameter(key_ref("nonce"), s(nonce))
            .parameter(key_ref("keyid"), s(keyid))
            .parameter(key_ref("alg"), s("hmac-sha256"));
        list.finish().unwrap()
    }

    #[test]
    fn signature_params_are_what_sfv_serializes() {
        for (nonce, keyid) in [
            ("DvM0CsfDkGzkTwZI4GmNtg", "abc"),
            ("n", "with \"quotes\" and \\ back;slash = x"),
            ("", " "),
        ] {
            for components in [&REQUIRED[..], &["@method", "content-digest"][..]] {
                let ours = signature_params(
                    components,
                    0,
                    999_999_999_999_999,
                    nonce,
                    keyid,
                    Alg::HmacSha256,
                )
                .unwrap();
                assert_eq!(
                    ours,
                    by_sfv(components, 0, 999_999_999_999_999, nonce, keyid)
                );
            }
        }
        assert!(signature_params(&REQUIRED, 1, 2, "n", "tab\there", Alg::Ed25519).is_err());
        assert!(
            signature_params(&REQUIRED, 1_000_000_000_000_000, 2, "n", "k", Alg::Ed25519).is_err()
        );
        assert!(signature_params(&[], 1, 2, "n", "k", Alg::Ed25519).is_err());
    }

    fn headers(input: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("signature-input", HeaderValue::from_str(input).unwrap());
        h.insert("signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn the_scanner_reads_what_the_signers_write_as_the_general_parser_does() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let uri: Uri = "http://h.example:7000/p?q=1".parse().unwrap();
        for body in [&b""[..], b"repository=r1"] {
            let mut a = HeaderMap::new();
            Signer {
                key: &key,
                keyid: "fpr",
            }
            .sign(&Method::POST, &uri, &mut a, body, 1_700_000_000)
            .unwrap();
            let mut b = HeaderMap::new();
            HmacSigner {
                key: &[5; 32],
                keyid: "session-1",
            }
            .sign_hashed(
                &Method::GET,
                &uri,
                &mut b,
                &BodyHash::of(body),
                1_700_000_000,
            )
            .unwrap();
            for h in [a, b] {
                let fast = parse_canonical(&h).expect("the scanner reads a signer's headers");
                assert_eq!(
                    fast.unwrap().reading(),
                    parse_general(&h).unwrap().reading()
                );
            }
        }
    }

    #[test]
    fn the_scanner_leaves_other_forms_to_the_general_parser() {
        let sig = "sig1=:AAAA:";
        let base = r#"sig1=("@method");created=1;expires=2;nonce="n";keyid="k";alg="hmac-sha256""#;
        assert!(parse_canonical(&headers(base, sig)).is_some());
        for other in [
            // a leading zero: sfv reads 1 and serializes "1", so the signed text differs
            r#"sig1=("@method");created=01;expires=2;nonce="n";keyid="k";alg="hmac-sha256""#,
            r#"sig1=("@method");created=1;expires=2;nonce="n";keyid="k\"q";alg="hmac-sha256""#,
            r#"sig1=("@method");expires=2;created=1;nonce="n";keyid="k";alg="hmac-sha256""#,
            r#"sig1=("@method");created=1;expires=2;nonce="n";keyid="k";alg="hmac-sha256";x=1"#,
            r#"sig1=("@method" );created=1;expires=2;nonce="n";keyid="k";alg="hmac-sha256""#,
            r#"sig1=("@method";p);created=1;expires=2;nonce="n";keyid="k";alg="hmac-sha256""#,
            r#"sig1=();created=1;expires=2;nonce="n";keyid="k";alg="hmac-sha256""#,
            r#"sig1=("@method");created=1;expires=2;nonce="n";keyid="k";alg="hmac-sha256", sig2=("@path")"#,
        ] {
            assert!(parse_canonical(&headers(other, sig)).is_none(), "{other}");
        }
        assert!(parse_canonical(&headers(base, "sig2=:AAAA:")).is_none());
        assert!(parse_canonical(&headers(base, "sig1=:AAA:")).is_none());
        // Read by the general parser, with the canonical text signed.
        let p = parse(&headers(
            r#"sig1=("@method");created=01;expires=2;nonce="n";keyid="k";alg="hmac-sha256""#,
            "sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
        ))
        .unwrap();
        assert_eq!(p.created(), 1);
        assert!(p.params.starts_with("(\"@method\");created=1;"));
    }
}
