//! The per-sandbox certificate authority and the bounded cache of leaf
//! certificates it mints for intercepted names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::parse::Host;

/// Leaf certificates are valid this long; the cache renews them at half-life.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Backdating absorbs clock skew between Lanyard and the agent's view of time.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Errors creating, loading or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Key or certificate material was rejected.
    #[error("{0}")]
    Invalid(String),
}

/// The sandbox CA: signs leaf certificates; its certificate is what the agent trusts.
pub struct SandboxCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

impl SandboxCa {
    /// A fresh P-256 CA that lives only in memory.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Invalid(format!("CA key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Lanyard sandbox CA");
        dn.push(DnType::OrganizationName, "Lanyard");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::from_secs(365 * 24 * 3600);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Invalid(format!("CA certificate: {e}")))?;
        Ok(SandboxCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from a PEM certificate and PEM PKCS#8 key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_file)?;
        let key_pem = zeroize::Zeroizing::new(read(key_file)?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CaError::Invalid(format!("{}: {e}", key_file.display())))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Invalid(format!("{}: {e}", cert_file.display())))?;
        check_ca_pair(&cert_der, &key).map_err(|why| {
            CaError::Invalid(format!(
                "{} with {}: {why}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::Invalid(format!("{}: {e}", cert_file.display())))?;
        Ok(SandboxCa {
            issuer,
            cert_der,
            cert_pem,
        })
    }

    /// The CA kept in `dir` (`ca.pem`, `ca-key.pem`) when a previous run left
    /// one there, else a fresh one written there. `dir` must be private to
    /// Lanyard: it is created 0700, and one that group or others can enter
    /// is refused rather than trusted with the key.
    pub fn load_or_generate_in(dir: &Path) -> Result<Self, CaError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let m = std::fs::symlink_metadata(dir).map_err(io(dir))?;
        if !m.is_dir() || m.mode() & 0o077 != 0 {
            return Err(CaError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other(format!(
                    "must be a directory only Lanyard can enter (mode 0700, found {:o}; a symlink is refused)",
                    m.mode() & 0o7777
                )),
            });
        }
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if key.exists() || cert.exists() {
            // Half a pair is damage, not a fresh start: generating would
            // silently change the CA the agent trusts.
            return Self::load(&cert, &key);
        }
        let ca = Self::generate()?;
        let key_pem = zeroize::Zeroizing::new(ca.issuer.key().serialize_pem());
        // The key lands first: a crash between the two leaves no certificate
        // without its key, and the next start finds half a pair and says so.
        write_atomically(&key, key_pem.as_bytes(), 0o600).map_err(io(&key))?;
        write_atomically(&cert, ca.cert_pem.as_bytes(), 0o644).map_err(io(&cert))?;
        Ok(ca)
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `bundle.pem` (the given roots plus this CA) into
    /// `dir`, atomically (write then rename), world-readable: the agent needs them.
    pub fn write_trust_files(
        &self,
        dir: &Path,
        roots: &[CertificateDer<'_>],
    ) -> Result<TrustFiles, CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        check_dir(dir).map_err(io(dir))?;
        let mut bundle = String::new();
        for der in roots {
            bundle.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())));
        }
        bundle.push_str(&self.cert_pem);
        let files = TrustFiles {
            ca_pem: dir.join("ca.pem"),
            bundle_pem: dir.join("bundle.pem"),
            truststore_p12: dir.join("truststore.p12"),
            wgetrc: dir.join("wgetrc"),
        };
        // Java: the same certificates as the bundle, the sandbox CA first.
        let entries: Vec<(String, CertificateDer<'_>)> =
            std::iter::once(("lanyard-sandbox-ca".to_owned(), self.cert_der.clone()))
                .chain(
                    roots
                        .iter()
                        .enumerate()
                        .map(|(i, der)| (format!("root-{i}"), der.clone())),
                )
                .collect();
        let p12 = crate::truststore::encode(&entries);
        // wget reads neither SSL_CERT_FILE nor a CA directory by default.
        let wgetrc = format!("ca_certificate = {}\n", files.bundle_pem.display());
        for (path, body) in [
            (&files.ca_pem, self.cert_pem.as_bytes()),
            (&files.bundle_pem, bundle.as_bytes()),
            (&files.truststore_p12, p12.as_slice()),
            (&files.wgetrc, wgetrc.as_bytes()),
        ] {
            write_atomically(path, body, 0o644).map_err(io(path))?;
        }
        Ok(files)
    }

    /// Mints a leaf for `host`, chained to this CA.
    pub fn mint(&self, host: &Host) -> Result<CertifiedKey, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Invalid(format!("leaf key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.as_server_name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Name(n) => SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|e| CaError::Invalid(format!("SAN {n}: {e}")))?,
            ),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Invalid(format!("leaf for {host}: {e}")))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| CaError::Invalid(format!("leaf key: {e}")))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signing,
        ))
    }
}

/// A loaded CA must be one: its key matches its certificate, the certificate
/// says it is a CA (and may sign certificates), and it is valid now.
/// Otherwise every agent handshake would fail later, with no hint why.
fn check_ca_pair(cert_der: &CertificateDer<'_>, key: &KeyPair) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("the private key does not belong to the certificate".into());
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err("the certificate is not a CA (basicConstraints cA is not set)".into()),
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err("the certificate's key usage does not allow signing certificates".into());
    }
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!(
            "the certificate is not valid now (not before {}, not after {})",
            validity.not_before, validity.not_after
        ));
    }
    Ok(())
}

/// Writes `body` to `path` through a fresh temporary file in the same
/// directory: created exclusively (a planted file or symlink at the
/// temporary name makes this fail rather than be followed), mode set on the
/// open file, then renamed over `path` (which replaces a link, never follows it).
fn write_atomically(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand_u64()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            // O_CREAT|O_EXCL: never follows a link at the name.
            .mode(0o600)
            .open(&tmp);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let done = file
            .write_all(body)
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)))
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return done;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Refuses a trust-file directory that others may write: they could swap
/// the files the agent trusts, or plant links for Lanyard (root) to follow.
fn check_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)?;
    if m.file_type().is_symlink() || !m.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory (a symlink is refused)",
            dir.display()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is writable by group or others (mode {:o}); make it 0755 or stricter",
            dir.display(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Paths of the trust files written for the agent.
#[derive(Debug, Clone)]
pub struct TrustFiles {
    /// The sandbox CA alone.
    pub ca_pem: PathBuf,
    /// System roots plus the sandbox CA.
    pub bundle_pem: PathBuf,
    /// The same certificates as a PKCS#12 truststore, for Java.
    pub truststore_p12: PathBuf,
    /// A wgetrc naming the bundle, for wget.
    pub wgetrc: PathBuf,
}

/// Leaf certificates by host: bounded (least-recently-used entries go first,
/// never a wipe of the whole cache), renewed at half their validity, and
/// minted once when many connections for a new name arrive together.
#[derive(Clone)]
pub struct CertCache {
    ca: Arc<SandboxCa>,
    cache: moka::future::Cache<Host, Arc<CertifiedKey>>,
    metrics: crate::ProxyMetrics,
}

impl std::fmt::Debug for CertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl CertCache {
    /// A cache of at most `capacity` leaves.
    pub fn new(ca: Arc<SandboxCa>, capacity: u64, metrics: crate::ProxyMetrics) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(LEAF_VALIDITY / 2)
            .build();
        Self { ca, cache, metrics }
    }

    /// The leaf for `host`, minted on first use.
    pub async fn get(&self, host: &Host) -> Result<Arc<CertifiedKey>, Arc<CaError>> {
        let ca = self.ca.clone();
        let h = host.clone();
        let minted = std::sync::atomic::AtomicBool::new(false);
        let got = self
            .cache
            .try_get_with(host.clone(), async {
                minted.store(true, std::sync::atomic::Ordering::Relaxed);
                ca.mint(&h).map(Arc::new)
            })
            .await;
        if minted.into_inner() {
            // Only after a mint (rare) is the entry count brought up to date for the gauge.
            self.metrics.leaf_certificates_minted.inc();
            self.cache.run_pending_tasks().await;
            let held = i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX);
            self.metrics.leaf_certificates_cached.set(held);
        }
        got
    }

    /// Entries currently held (approximate until pending maintenance runs).
    pub async fn len(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// True when no leaf is cached.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cache_is_bounded_without_wiping() {
        let cache = CertCache::new(
            Arc::new(SandboxCa::generate().unwrap()),
            4,
            crate::ProxyMetrics::default(),
        );
        let first = cache.get(&Host::parse("a0.test").unwrap()).await.unwrap();
        for i in 0..10 {
            cache
                .get(&Host::parse(&format!("a{i}.test")).unwrap())
                .await
                .unwrap();
        }
        assert!(cache.len().await <= 4);
        assert!(cache.len().await >= 1);
        let again = cache.get(&Host::parse("a9.test").unwrap()).await.unwrap();
        let again2 = cache.get(&Host::parse("a9.test").unwrap()).await.unwrap();
        assert!(Arc::ptr_eq(&again, &again2), "a hot entry was re-minted");
        drop(first);
    }

    #[test]
    fn a_kept_ca_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let first = SandboxCa::load_or_generate_in(&dir).unwrap();
        let again = SandboxCa::load_or_generate_in(&dir).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
        // Half a pair is refused, not replaced by a CA the agent never saw.
        std::fs::remove_file(dir.join("ca.pem")).unwrap();
        assert!(SandboxCa::load_or_generate_in(&dir).is_err());
        // A directory others can enter is refused.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = SandboxCa::load_or_generate_in(&open)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0700"), "{e}");
    }

    #[test]
    fn load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let ca = SandboxCa::load(&dir.path().join("c.pem"), &dir.path().join("k.pem")).unwrap();
        ca.mint(&Host::parse("x.test").unwrap()).unwrap();
        let files = ca.write_trust_files(&dir.path().join("out"), &[]).unwrap();
        assert_eq!(std::fs::read_to_string(files.ca_pem).unwrap(), cert.pem());
        let err = SandboxCa::load(&dir.path().join("c.pem"), &dir.path().join("missing.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("missing.pem"));
    }

    fn write_pair(
        dir: &Path,
        name: &str,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> (PathBuf, PathBuf) {
        let cert = params.self_signed(key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_ca_that_cannot_work_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let (cert, _) = write_pair(dir.path(), "good", &ca, &key);
        // A key from another pair.
        let (_, other_key) = write_pair(dir.path(), "other", &ca, &KeyPair::generate().unwrap());
        let e = SandboxCa::load(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        // Not a CA.
        let leaf = CertificateParams::new(vec!["x.test".into()]).unwrap();
        let (c, k) = write_pair(dir.path(), "leaf", &leaf, &KeyPair::generate().unwrap());
        let e = SandboxCa::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("not a CA"), "{e}");
        // A CA whose key usage forbids signing certificates.
        let mut no_sign = ca.clone();
        no_sign.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (c, k) = write_pair(
            dir.path(),
            "nosign",
            &no_sign,
            &KeyPair::generate().unwrap(),
        );
        let e = SandboxCa::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("key usage"), "{e}");
        // Expired.
        let mut old = ca.clone();
        old.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
        old.not_after = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
        let (c, k) = write_pair(dir.path(), "old", &old, &KeyPair::generate().unwrap());
        let e = SandboxCa::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("not valid now"), "{e}");
    }

    #[test]
    fn trust_files_never_follow_planted_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Links at the old predictable temporary name and at the final names.
        std::os::unix::fs::symlink(&victim, out.join("ca.pem.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("bundle.pem")).unwrap();
        let ca = SandboxCa::generate().unwrap();
        let files = ca.write_trust_files(&out, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the victim was chmodded");
        assert!(
            !std::fs::symlink_metadata(&files.bundle_pem)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = std::fs::metadata(&files.ca_pem)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        // A directory others can write is refused.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ca.write_trust_files(&out, &[]).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
    }
}
