//! A PKCS#12 truststore (RFC 7292) for Java agents, which read neither
//! `SSL_CERT_FILE` nor PEM: the same certificates as `bundle.pem`, each in
//! a certificate bag marked with the attribute Java's `PKCS12KeyStore` reads
//! as "trusted certificate entry" (Oracle's trusted-key-usage OID with
//! anyExtendedKeyUsage, what `keytool -importcert` writes).
//!
//! Nothing in it is secret, so it is neither encrypted nor MACed: Java then
//! loads it with no password (`javax.net.ssl.trustStorePassword` unset), and
//! a password-protected store would only mean publishing the password. The
//! encoder is a few DER writers; no PKCS#12 crate is needed to write
//! certificates only.

use rustls_pki_types::CertificateDer;

const ID_DATA: &str = "1.2.840.113549.1.7.1";
const CERT_BAG: &str = "1.2.840.113549.1.12.10.1.3";
const X509_CERTIFICATE: &str = "1.2.840.113549.1.9.22.1";
const FRIENDLY_NAME: &str = "1.2.840.113549.1.9.20";
/// `ORACLE_TrustedKeyUsage`: Java lists a bag carrying it as a trusted certificate.
const JAVA_TRUSTED_KEY_USAGE: &str = "2.16.840.1.113894.746875.1.1";
const ANY_EXTENDED_KEY_USAGE: &str = "2.5.29.37.0";

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            // At most 8 length bytes: the count always fits.
            out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(8));
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn set(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

/// `[0] EXPLICIT`.
fn explicit0(inner: Vec<u8>) -> Vec<u8> {
    tlv(0xa0, &inner)
}

fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').filter_map(|a| a.parse().ok()).collect();
    let mut body = Vec::new();
    if let [a, b, rest @ ..] = arcs.as_slice() {
        let seven = |v: u64| u8::try_from(v & 0x7f).unwrap_or(0);
        for arc in std::iter::once(a * 40 + b).chain(rest.iter().copied()) {
            let mut chunk = vec![seven(arc)];
            let mut v = arc >> 7;
            while v > 0 {
                chunk.push(0x80 | seven(v));
                v >>= 7;
            }
            chunk.reverse();
            body.extend(chunk);
        }
    }
    tlv(0x06, &body)
}

fn bmp_string(s: &str) -> Vec<u8> {
    let units: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
    tlv(0x1e, &units)
}

/// `ContentInfo` of type `data` wrapping `inner`.
fn data(inner: Vec<u8>) -> Vec<u8> {
    seq(&[oid(ID_DATA), explicit0(octets(&inner))])
}

/// The truststore as DER: one trusted-certificate entry per certificate,
/// named `alias-0`, `alias-1`... in order.
pub fn encode(certs: &[(String, CertificateDer<'_>)]) -> Vec<u8> {
    let bags: Vec<Vec<u8>> = certs
        .iter()
        .map(|(alias, der)| {
            let cert_bag = seq(&[oid(X509_CERTIFICATE), explicit0(octets(der.as_ref()))]);
            let attributes = set(&[
                seq(&[oid(FRIENDLY_NAME), set(&[bmp_string(alias)])]),
                seq(&[
                    oid(JAVA_TRUSTED_KEY_USAGE),
                    set(&[oid(ANY_EXTENDED_KEY_USAGE)]),
                ]),
            ]);
            seq(&[oid(CERT_BAG), explicit0(cert_bag), attributes])
        })
        .collect();
    let safe_contents = seq(&bags);
    let authenticated_safe = seq(&[data(safe_contents)]);
    seq(&[tlv(0x02, &[3]), data(authenticated_safe)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_primitives_encode_as_x690_says() {
        assert_eq!(
            oid("1.2.840.113549.1.7.1"),
            [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01
            ]
        );
        assert_eq!(oid("2.5.29.37.0"), [0x06, 0x04, 0x55, 0x1d, 0x25, 0x00]);
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(long[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
        assert_eq!(bmp_string("ab"), [0x1e, 4, 0, b'a', 0, b'b']);
    }

    #[test]
    fn the_store_nests_one_bag_per_certificate() {
        let certs = vec![
            ("a".to_owned(), CertificateDer::from(vec![0x30, 0x00])),
            ("b".to_owned(), CertificateDer::from(vec![0x30, 0x00])),
        ];
        let der = encode(&certs);
        assert_eq!(der[0], 0x30);
        // version 3 first, then the data ContentInfo.
        let body_start = if der[1] & 0x80 == 0 {
            2
        } else {
            2 + usize::from(der[1] & 0x7f)
        };
        assert_eq!(der[body_start..body_start + 3], [0x02, 0x01, 0x03]);
        let bag_oid = oid(CERT_BAG);
        let count = der
            .windows(bag_oid.len())
            .filter(|w| *w == bag_oid.as_slice())
            .count();
        assert_eq!(count, 2);
    }
}
