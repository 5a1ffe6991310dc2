//! A test identity provider, run in-process by Gatehouse's tests: HTTPS (its own CA, written
//! to a file for `ca_file`), an OIDC discovery document, a JWKS whose keys can be rotated,
//! token minting with any header or claim (for the cases of ../shared/security/tokens.md),
//! the device authorization flow, and switches that make it fail (down, slow, huge, garbage).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::EncodingKey;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the IdP answers its key endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// 503 on every request.
    Down,
    /// Never answers (until the client gives up).
    Hang,
    /// A 50 MB JWKS.
    Huge,
    /// A JWKS that is not JSON.
    Garbage,
}

/// A signing key of the IdP.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK as published.
    pub jwk: Value,
}

impl SigningKey {
    /// A new key for `alg` (RS256, ES256 or EdDSA).
    pub fn generate(kid: &str, alg: Algorithm) -> SigningKey {
        match alg {
            Algorithm::RS256 => rsa_key(kid, 2048),
            Algorithm::ES256 => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let raw = pair.public_key_raw();
                SigningKey {
                    kid: kid.into(),
                    alg,
                    encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
                    jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
                }
            }
            Algorithm::EdDSA => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
                SigningKey {
                    kid: kid.into(),
                    alg,
                    encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
                    jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                        "x": b64(pair.public_key_raw())}),
                }
            }
            other => panic!("the test IdP does not make {other:?} keys"),
        }
    }

    /// An RSA key of `bits` (a 1024-bit one tests that weak keys are ignored).
    pub fn rsa(kid: &str, bits: usize) -> SigningKey {
        rsa_key(kid, bits)
    }

    /// Signs `header.payload` as given, whatever the header says.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{message}.{sig}")
    }
}

fn rsa_key(kid: &str, bits: usize) -> SigningKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rand08::thread_rng(), bits).unwrap();
    let der = key.to_pkcs1_der().unwrap();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())}),
    }
}

/// Unpadded base64url.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How a pending device login will be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAnswer {
    /// Pending for the first poll, then approved.
    Approve,
    Deny,
}

struct State {
    mode: Mode,
    /// Published keys; the first signs by default.
    keys: Vec<Arc<SigningKey>>,
    device: DeviceAnswer,
    device_polls: HashMap<String, u32>,
}

/// A running test IdP; it stops with the test's runtime.
pub struct TestIdp {
    pub issuer: String,
    /// The CA that signed the IdP's certificate, as a PEM file.
    pub ca_file: PathBuf,
    _dir: tempfile_dir::Dir,
    state: Arc<Mutex<State>>,
    jwks_fetches: Arc<AtomicUsize>,
    /// The audience device-flow tokens are minted for.
    pub client_id: String,
}

mod tempfile_dir {
    /// A directory removed on drop (no extra dependency for one directory).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestIdp {
    /// Starts an IdP on 127.0.0.1 with one RS256 key (kid `rsa-1`).
    pub async fn start() -> TestIdp {
        Self::start_with(vec![SigningKey::generate("rsa-1", Algorithm::RS256)]).await
    }

    pub async fn start_with(keys: Vec<SigningKey>) -> TestIdp {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-testidp-{}-{}",
            std::process::id(),
            rand08::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, cert_pem, key_pem) = tls_material();
        let ca_file = dir.join("idp-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Up,
            keys: keys.into_iter().map(Arc::new).collect(),
            device: DeviceAnswer::Approve,
            device_polls: HashMap::new(),
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let server = Server {
            issuer: issuer.clone(),
            client_id: "gatehouse-cli".into(),
            state: state.clone(),
            jwks_fetches: jwks_fetches.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        server.handle(tls).await;
                    }
                });
            }
        });
        TestIdp {
            issuer,
            ca_file,
            _dir: tempfile_dir::Dir(dir),
            state,
            jwks_fetches,
            client_id: "gatehouse-cli".into(),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn set_device_answer(&self, answer: DeviceAnswer) {
        self.state.lock().unwrap().device = answer;
    }

    /// Publishes `key` first (it signs from now on); `keep_old` keeps the others published.
    pub fn rotate(&self, key: SigningKey, keep_old: bool) {
        let mut s = self.state.lock().unwrap();
        if !keep_old {
            s.keys.clear();
        }
        s.keys.insert(0, Arc::new(key));
    }

    /// Publishes an extra JWK as is (for unsuitable-key cases).
    pub fn publish_raw(&self, key: SigningKey) {
        self.state.lock().unwrap().keys.push(Arc::new(key));
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The current signing key.
    pub fn key(&self) -> Arc<SigningKey> {
        self.state.lock().unwrap().keys[0].clone()
    }

    /// The published key with `kid`.
    pub fn key_by_kid(&self, kid: &str) -> Arc<SigningKey> {
        let s = self.state.lock().unwrap();
        s.keys.iter().find(|k| k.kid == kid).unwrap().clone()
    }

    /// Valid claims for `sub` and `audience`: issued now, valid 10 minutes.
    pub fn claims(&self, sub: &str, audience: &str) -> Value {
        let now = now();
        json!({"iss": self.issuer, "sub": sub, "aud": audience, "iat": now, "nbf": now,
               "exp": now + 600, "jti": format!("jti-{}", rand08::random::<u64>())})
    }

    /// A token signed by the current key with the standard header and `claims`.
    pub fn mint(&self, claims: &Value) -> String {
        let key = self.key();
        key.sign_raw(&self.header(&key), claims)
    }

    /// The standard header for `key`.
    pub fn header(&self, key: &SigningKey) -> Value {
        json!({"alg": alg_name(key.alg), "typ": "JWT", "kid": key.kid})
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        _ => "other",
    }
}

#[derive(Clone)]
struct Server {
    issuer: String,
    client_id: String,
    state: Arc<Mutex<State>>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl Server {
    async fn handle<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut s: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
        let mut first = head.split_whitespace();
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let mode = self.state.lock().unwrap().mode;
        let (status, response): (u16, Vec<u8>) = match (mode, method, path) {
            (Mode::Down, _, _) => (503, b"{\"error\":\"down\"}".to_vec()),
            (Mode::Hang, _, _) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            (_, "GET", "/.well-known/openid-configuration") => (200, self.discovery()),
            (_, "GET", "/jwks") => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                match mode {
                    Mode::Huge => (200, vec![b' '; 50 << 20]),
                    Mode::Garbage => (200, b"<html>not json</html>".to_vec()),
                    _ => (200, self.jwks()),
                }
            }
            (_, "POST", "/device") => (200, self.device_start()),
            (_, "POST", "/token") => self.device_token(&body),
            _ => (404, b"{}".to_vec()),
        };
        let reason = if status == 200 { "OK" } else { "Error" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            response.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&response).await;
        let _ = s.shutdown().await;
    }

    fn discovery(&self) -> Vec<u8> {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks", self.issuer),
            "device_authorization_endpoint": format!("{}/device", self.issuer),
            "token_endpoint": format!("{}/token", self.issuer),
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        })
        .to_string()
        .into_bytes()
    }

    fn jwks(&self) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        let keys: Vec<Value> = s.keys.iter().map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    fn device_start(&self) -> Vec<u8> {
        let code = format!("dev-{}", rand08::random::<u32>());
        self.state
            .lock()
            .unwrap()
            .device_polls
            .insert(code.clone(), 0);
        json!({"device_code": code, "user_code": "WDJB-MJHT",
               "verification_uri": format!("{}/activate", self.issuer),
               "expires_in": 60, "interval": 1})
        .to_string()
        .into_bytes()
    }

    fn device_token(&self, body: &str) -> (u16, Vec<u8>) {
        let field = |name: &str| {
            body.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        };
        let mut s = self.state.lock().unwrap();
        let answer = s.device;
        let Some(polls) = field("device_code").and_then(|c| s.device_polls.get_mut(&c)) else {
            return (400, b"{\"error\":\"invalid_grant\"}".to_vec());
        };
        *polls += 1;
        if answer == DeviceAnswer::Deny {
            return (400, b"{\"error\":\"access_denied\"}".to_vec());
        }
        if *polls < 2 {
            return (400, b"{\"error\":\"authorization_pending\"}".to_vec());
        }
        let key = s.keys[0].clone();
        drop(s);
        let now = now();
        let claims = json!({"iss": self.issuer, "sub": "user-4711", "aud": self.client_id,
            "iat": now, "exp": now + 600, "preferred_username": "alice", "groups": ["dba"]});
        let header = json!({"alg": alg_name(key.alg), "typ": "JWT", "kid": key.kid});
        let id_token = key.sign_raw(&header, &claims);
        (
            200,
            json!({"access_token": "opaque-access-token", "token_type": "Bearer",
                   "id_token": id_token, "expires_in": 600})
            .to_string()
            .into_bytes(),
        )
    }
}

/// A CA and a certificate for `localhost` and `127.0.0.1` signed by it: (CA PEM, certificate
/// PEM, key PEM). Tests use it for any TLS server of their own.
pub fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
