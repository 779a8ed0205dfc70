//! Encryption in transit (`--cluster-tls`): the cluster channel in TLS 1.3, with
//! no CA and no certificate files. At start the sidecar makes a self-signed
//! certificate from its own ed25519 host key (subject `HOST.node.ZONE`, in
//! memory, for the life of the process); both ends present theirs (mutual TLS).
//!
//! Trust is the directory's, not a CA's. During the handshake each side checks
//! that the other's certificate holds an ed25519 key and that the TLS 1.3
//! `CertificateVerify` signature checks out with that key (so the peer holds the
//! private key). Right after the handshake, before a byte of HTTP, the key is
//! looked up in the directory (`FPR.key.Z`): the caller keeps the connection only
//! if the key is the one of the host it meant to reach; the listener only if the
//! key is a known, available host's. Anything else is refused with a log line
//! that names the host and the reason. Calls inside stay signed as before.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use switchboard_proto::model::PublicKey;
use switchboard_proto::schema;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::directory::answers::DirectoryClient;
use crate::identity::{self, Identity, KeyInfo};
use crate::quiet::Budget;

/// How long a TLS handshake may take, on either side: a peer that does not
/// speak TLS, or says nothing, fails within this, never hangs.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410), before the
/// 32 key bytes.
const ED25519_SPKI: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The reason code of a plain call refused by a TLS cluster listener.
pub const TLS_REQUIRED: &str = "tls-required";

/// Why the cluster TLS set-up could not be made at start.
#[derive(Debug, thiserror::Error)]
#[error("--cluster-tls: {0}")]
pub struct TlsSetupError(String);

/// rustls' *ring* provider with X25519 as the only key exchange.
#[allow(deprecated)]
fn cluster_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::ring::kx_group::X25519],
        ..rustls::crypto::ring::default_provider()
    }
}

/// This host's side of the cluster TLS channel: its certificate, the client
/// and server configurations, and the directory to pin peers' keys to.
pub struct ClusterTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    dir: Arc<DirectoryClient>,
    zone: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

/// The ed25519 key in a certificate, or why there is none.
pub fn cert_key(cert: &CertificateDer<'_>) -> Result<PublicKey, String> {
    let parsed = ParsedCertificate::try_from(cert)
        .map_err(|e| format!("its certificate cannot be parsed: {e}"))?;
    let spki = parsed.subject_public_key_info();
    let der: &[u8] = spki.as_ref();
    match der.strip_prefix(&ED25519_SPKI[..]) {
        Some(raw) if raw.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(raw);
            Ok(PublicKey(k))
        }
        _ => Err("its certificate's key is not an ed25519 key".to_string()),
    }
}

/// Accepts a certificate whose key is ed25519; who the key belongs to is
/// checked against the directory right after the handshake.
fn ed25519_only(cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    cert_key(cert).map(|_| ()).map_err(rustls::Error::General)
}

/// The client's check of a listener's certificate (pinned after the handshake).
#[derive(Debug)]
struct PinnedServer {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        ed25519_only(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "the cluster channel is TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The listener's check of a caller's certificate (mandatory; pinned after the handshake).
#[derive(Debug)]
struct PinnedClient {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ed25519_only(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "the cluster channel is TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Why a TLS connection to a peer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    #[error("{host} answered without TLS: is --cluster-tls on there?")]
    NotTls { host: String },
    #[error("{host} closed the connection during the TLS handshake: is --cluster-tls on there, and is this host's key in the directory?")]
    Closed { host: String },
    #[error(
        "no TLS handshake with {host} within {0:?}: is --cluster-tls on there?",
        HANDSHAKE_TIMEOUT
    )]
    Timeout { host: String },
    #[error("TLS handshake with {host} failed: {reason}")]
    Handshake { host: String, reason: String },
    #[error("refused {host}'s TLS certificate: {reason}")]
    Refused { host: String, reason: String },
}

impl ClusterTls {
    /// Makes this host's certificate from its key, and the TLS 1.3 client and
    /// server configurations around it.
    pub fn new(
        id: &Identity,
        me: &KeyInfo,
        dir: Arc<DirectoryClient>,
    ) -> Result<Arc<Self>, TlsSetupError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| TlsSetupError(format!("{what}: {e}"));
        let zone = dir.zone().to_ascii().trim_end_matches('.').to_string();
        let name = format!("{}.{}.{zone}", me.host, schema::NODE);
        let pkcs8 = id
            .key
            .to_pkcs8_der()
            .map_err(|e| bad("cannot encode the host key", &e))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| bad("cannot use the host key", &e))?;
        let mut params = rcgen::CertificateParams::new(vec![name.clone()])
            .map_err(|e| bad("bad certificate name", &e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params
            .self_signed(&pair)
            .map_err(|e| bad("cannot make the certificate", &e))?
            .der()
            .clone();
        // ring, not aws-lc-rs (a C and cmake build): no post-quantum key
        // exchange, which rustls marks deprecated. X25519 alone: ring's default
        // list starts with P-384, whose key generation and exchange cost every
        // new connection several times as much, and every peer is a sidecar.
        let provider = Arc::new(cluster_provider());
        let algs = provider.signature_verification_algorithms;
        let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("client configuration", &e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer { algs }))
            .with_client_auth_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(pkcs8.clone_key()))
            .map_err(|e| bad("client certificate", &e))?;
        // Every connection makes a full handshake, so every one is pinned
        // (connections are pooled: handshakes are rare).
        client_cfg.resumption = rustls::client::Resumption::disabled();
        let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("server configuration", &e))?
            .with_client_cert_verifier(Arc::new(PinnedClient { algs }))
            .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(pkcs8))
            .map_err(|e| bad("server certificate", &e))?;
        server_cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server_cfg.send_tls13_tickets = 0;
        Ok(Arc::new(ClusterTls {
            connector: TlsConnector::from(Arc::new(client_cfg)),
            acceptor: TlsAcceptor::from(Arc::new(server_cfg)),
            dir,
            zone,
        }))
    }

    /// [`plain_refusal`], counted (`tls-required`).
    pub fn refuse_plain(
        &self,
        peer: SocketAddr,
        path: &str,
    ) -> http::Response<crate::body::BoxBody> {
        self.dir.metrics.refusal(TLS_REQUIRED);
        plain_refusal(peer, path)
    }

    /// TLS over `stream` to `host`'s cluster listener: kept only if the
    /// certificate's key is the one the directory has for `host`.
    pub async fn connect(
        &self,
        host: &str,
        addr: &str,
        stream: TcpStream,
    ) -> Result<client::TlsStream<TcpStream>, TlsConnectError> {
        let name = ServerName::try_from(format!("{host}.{}.{}", schema::NODE, self.zone))
            .or_else(|_| ServerName::try_from("node.invalid".to_string()))
            .map_err(|e| TlsConnectError::Handshake {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        let shake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream));
        let tls = match shake.await {
            Err(_) => Err(TlsConnectError::Timeout {
                host: host.to_string(),
            }),
            Ok(Err(e)) => Err(handshake_error(host, e)),
            Ok(Ok(tls)) => Ok(tls),
        };
        let tls = tls.inspect_err(|e| tracing::warn!(peer = host, %addr, "{e}"))?;
        let key = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "it presented no certificate".to_string())
            .and_then(cert_key);
        let refused = |reason: String| {
            let e = TlsConnectError::Refused {
                host: host.to_string(),
                reason,
            };
            tracing::warn!(peer = host, %addr, "{e}");
            e
        };
        let key = key.map_err(refused)?;
        let fpr = key.fingerprint();
        match identity::lookup(&self.dir, &fpr).await {
            Ok(Some(info)) if info.host == host && info.key == key => Ok(tls),
            Ok(Some(info)) => Err(refused(format!(
                "we meant to reach {host}, but its key {fpr} is the key of {}",
                info.host
            ))),
            Ok(None) => Err(refused(format!(
                "its key {fpr} belongs to no host in the directory"
            ))),
            Err(e) => Err(refused(format!("cannot look its key {fpr} up: {e}"))),
        }
    }

    /// A connection accepted on the cluster listener: TLS once the handshake
    /// is done and the caller's key is a known, available host's; plain HTTP
    /// (which the listener serves `GET /metrics` only, see [`plain_allowed`]);
    /// or nothing (a refused key gets a one-line refusal in HTTP, then the
    /// connection closes).
    pub async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Accepted {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
        match peeked {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Ok(1)) => return Accepted::Plain(stream),
            _ => return Accepted::Closed,
        }
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                static LOG: Budget = Budget::new();
                self.dir.metrics.refusal("tls-handshake");
                if let Some(skipped) = LOG.admit() {
                    tracing::warn!(%peer, error = %e, skipped, "TLS handshake from {peer} failed");
                }
                return Accepted::Closed;
            }
            Err(_) => {
                static LOG: Budget = Budget::new();
                self.dir.metrics.refusal("tls-handshake");
                if let Some(skipped) = LOG.admit() {
                    tracing::warn!(%peer, skipped, "no TLS handshake from {peer} within {HANDSHAKE_TIMEOUT:?}");
                }
                return Accepted::Closed;
            }
        };
        let key = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "it presented no certificate".to_string())
            .and_then(cert_key);
        // (the reason counted and answered, what the log and the answer say)
        let (reason, why) = match key {
            Err(why) => ("tls-certificate", why),
            Ok(key) => {
                let fpr = key.fingerprint();
                match identity::lookup(&self.dir, &fpr).await {
                    Ok(Some(info)) if info.key == key => {
                        match self.dir.host_available(&info.host).await {
                            Ok(Some(true)) => return Accepted::Tls(Box::new(tls), info),
                            Ok(_) => ("host-unavailable", format!(
                                "its key {fpr} is {}'s, which is marked unavailable in the directory",
                                info.host
                            )),
                            Err(e) => ("directory-unreachable", format!("cannot check host {}: {e}", info.host)),
                        }
                    }
                    Ok(_) => (
                        "unknown-key",
                        format!("its key {fpr} belongs to no host in the directory"),
                    ),
                    Err(e) => (
                        "directory-unreachable",
                        format!("cannot look its key {fpr} up: {e}"),
                    ),
                }
            }
        };
        static LOG: Budget = Budget::new();
        self.dir.metrics.refusal(reason);
        if let Some(skipped) = LOG.admit() {
            tracing::warn!(%peer, reason, skipped, "refused the TLS caller at {peer}: {why}");
        }
        let _ = refuse(
            &mut tls,
            "403 Forbidden",
            reason,
            &format!("refused the TLS certificate: {why}"),
        )
        .await;
        Accepted::Closed
    }
}

/// What became of a connection accepted on a TLS cluster listener.
pub enum Accepted {
    /// TLS, from a known, available host.
    Tls(Box<server::TlsStream<TcpStream>>, KeyInfo),
    /// Plain HTTP: only [`plain_allowed`] requests are served on it.
    Plain(TcpStream),
    /// Refused or gone.
    Closed,
}

/// Whether a plain HTTP request may be served by a TLS cluster listener: the
/// metrics scrape only (what it served unsigned before); every cluster call
/// needs TLS.
pub fn plain_allowed(method: &http::Method, path: &str) -> bool {
    method == http::Method::GET && path == "/metrics"
}

/// The answer to a plain HTTP call on a TLS cluster listener, logged.
pub fn plain_refusal(peer: SocketAddr, path: &str) -> http::Response<crate::body::BoxBody> {
    static LOG: Budget = Budget::new();
    if let Some(skipped) = LOG.admit() {
        tracing::warn!(%peer, path, skipped, "plain HTTP from {peer} on the cluster listener, which speaks TLS (--cluster-tls): is --cluster-tls on there? refused");
    }
    let mut r = crate::reply::error(
        http::StatusCode::MISDIRECTED_REQUEST,
        TLS_REQUIRED,
        "this cluster listener speaks TLS only (--cluster-tls); turn --cluster-tls on on the calling host",
    );
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

/// Maps a failed client handshake to what it most likely means.
fn handshake_error(host: &str, e: io::Error) -> TlsConnectError {
    let host = host.to_string();
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        if matches!(inner, rustls::Error::InvalidMessage(_)) {
            return TlsConnectError::NotTls { host };
        }
        return TlsConnectError::Handshake {
            host,
            reason: inner.to_string(),
        };
    }
    if matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    ) {
        return TlsConnectError::Closed { host };
    }
    TlsConnectError::Handshake {
        host,
        reason: e.to_string(),
    }
}

/// Writes a one-shot HTTP/1.1 refusal (JSON, `x-switchboard-reason`) and closes.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    status: &str,
    reason: &str,
    message: &str,
) -> io::Result<()> {
    let body = serde_json::json!({"error": message, "reason": reason}).to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{}: {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::reply::REASON,
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await?;
    w.flush().await?;
    w.shutdown().await
}
