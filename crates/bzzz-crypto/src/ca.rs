//! The cluster's certificate authority (SPEC §8, TLS for the API and
//! console): an ECDSA P-256 CA (browsers do not accept Ed25519 chains)
//! made at setup, name-constrained to private address ranges and local
//! names, endorsed by the cluster admin key (its certificate is part of
//! the admin-signed genesis record), and the node certificates it issues.
//! Certificates are made with `rcgen`; nothing here is hand-written DER.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    PKCS_ECDSA_P256_SHA256, SanType, SubjectPublicKeyInfo,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// How long the CA is valid.
pub const CA_DAYS: i64 = 3650;
/// How long a node certificate is valid (renewed well before).
pub const NODE_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct CaError(String);

fn e(x: impl std::fmt::Display) -> CaError {
    CaError(x.to_string())
}

/// A P-256 private key (PKCS#8 PEM), zeroized on drop, never printed.
pub struct TlsKey(Zeroizing<String>);

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsKey([redacted])")
    }
}

impl TlsKey {
    /// A fresh key.
    pub fn generate() -> Result<Self, CaError> {
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
        Ok(Self(Zeroizing::new(k.serialize_pem())))
    }

    /// A key from its PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let k = KeyPair::from_pem(pem).map_err(e)?;
        if !std::ptr::eq(k.algorithm(), &PKCS_ECDSA_P256_SHA256) {
            return Err(CaError("not a P-256 key".into()));
        }
        Ok(Self(Zeroizing::new(pem.to_owned())))
    }

    /// The PKCS#8 PEM (secret: keep it sealed).
    pub fn expose_pem(&self) -> &str {
        &self.0
    }

    fn pair(&self) -> Result<KeyPair, CaError> {
        KeyPair::from_pem(&self.0).map_err(e)
    }

    /// The public key (SubjectPublicKeyInfo DER).
    pub fn public_der(&self) -> Result<Vec<u8>, CaError> {
        Ok(self.pair()?.public_key_der())
    }
}

/// `SHA256:` and the hex of the SHA-256 of a certificate's DER (what
/// `bzzz init --json` prints as `ca_fingerprint`).
pub fn fingerprint(cert_pem: &str) -> Result<String, CaError> {
    Ok(format!(
        "SHA256:{}",
        hex::encode(Sha256::digest(der_of(cert_pem)?))
    ))
}

/// The DER of a PEM certificate.
pub fn der_of(cert_pem: &str) -> Result<Vec<u8>, CaError> {
    let p = pem::parse(cert_pem).map_err(e)?;
    if p.tag() != "CERTIFICATE" {
        return Err(CaError(format!("a {} is no certificate", p.tag())));
    }
    Ok(p.into_contents())
}

/// Whether the certificate `cert_pem` is for the public key `spki_der`.
pub fn has_public_key(cert_pem: &str, spki_der: &[u8]) -> Result<bool, CaError> {
    let der = der_of(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(e)?;
    Ok(cert.public_key().raw == spki_der)
}

/// Checks that `ca_pem` has the shape of a cluster CA: a CA that signs
/// only end certificates (path length 0) and carries name constraints, so
/// trusting it cannot vouch for public names.
pub fn check_ca_shape(ca_pem: &str) -> Result<(), CaError> {
    let der = der_of(ca_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&der).map_err(e)?;
    let bc = ca
        .basic_constraints()
        .map_err(e)?
        .ok_or_else(|| CaError("not a CA certificate".into()))?;
    if !bc.value.ca || bc.value.path_len_constraint != Some(0) {
        return Err(CaError(
            "not a CA limited to end certificates (pathlen 0)".into(),
        ));
    }
    if ca.name_constraints().map_err(e)?.is_none() {
        return Err(CaError(
            "a CA without name constraints is no cluster CA".into(),
        ));
    }
    Ok(())
}

/// Checks that `cert_pem` is signed by the CA `ca_pem`.
pub fn verify_issued(cert_pem: &str, ca_pem: &str) -> Result<(), CaError> {
    let der = der_of(cert_pem)?;
    let ca_der = der_of(ca_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(e)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(e)?;
    if cert.issuer() != ca.subject() {
        return Err(CaError("not issued by this CA".into()));
    }
    cert.verify_signature(Some(ca.public_key())).map_err(e)
}

/// The certificate's validity end (Unix seconds).
pub fn not_after(cert_pem: &str) -> Result<i64, CaError> {
    let der = der_of(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(e)?;
    Ok(cert.validity().not_after.timestamp())
}

fn cidr(ip: [u8; 4], prefix: u8) -> GeneralSubtree {
    GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(IpAddr::from(ip), prefix))
}

/// The names a cluster CA may certify: the private and link-local address
/// ranges (RFC 1918, 100.64/10, 127/8, 169.254/16, fc00::/7, fe80::/10,
/// ::1), the exact `extra` addresses (a node on a public address at
/// setup), and host names under `localhost`, `local`, `lan`, `internal`
/// and `home.arpa`. A certificate for any other name, even one this CA
/// signed, is refused by every client that checks name constraints
/// (rustls, browsers): a stolen CA key cannot impersonate public sites.
pub fn permitted(extra: &[IpAddr]) -> NameConstraints {
    let mut p = vec![
        cidr([10, 0, 0, 0], 8),
        cidr([172, 16, 0, 0], 12),
        cidr([192, 168, 0, 0], 16),
        cidr([100, 64, 0, 0], 10),
        cidr([127, 0, 0, 0], 8),
        cidr([169, 254, 0, 0], 16),
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            "fc00::".parse().expect("ip"),
            7,
        )),
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            "fe80::".parse().expect("ip"),
            10,
        )),
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            "::1".parse().expect("ip"),
            128,
        )),
    ];
    for ip in extra {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        p.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            *ip, bits,
        )));
    }
    for d in ["localhost", "local", "lan", "internal", "home.arpa"] {
        p.push(GeneralSubtree::DnsName(d.into()));
    }
    NameConstraints {
        permitted_subtrees: p,
        excluded_subtrees: Vec::new(),
    }
}

/// A new cluster CA: its certificate (PEM) and key.
pub fn make_ca(cluster: &str, extra: &[IpAddr]) -> Result<(String, TlsKey), CaError> {
    let key = TlsKey::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("BZZZ cluster CA ({cluster})"));
    dn.push(DnType::OrganizationName, "BZZZ");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(permitted(extra));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key.pair()?).map_err(e)?;
    Ok((cert.pem(), key))
}

fn random_serial() -> Result<rcgen::SerialNumber, CaError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(e)?;
    b[0] &= 0x7f;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

/// What a node certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    /// The node id (the subject's common name).
    pub node_id: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

fn leaf_params(names: &NodeNames, days: i64) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.node_id.clone());
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .ips
        .iter()
        .map(|ip| SanType::IpAddress(*ip))
        .chain(
            names
                .dns
                .iter()
                .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName)),
        )
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A node certificate (PEM) for the public key `spki_der`, signed by the
/// CA, valid [`NODE_DAYS`].
pub fn issue(
    ca_cert_pem: &str,
    ca_key: &TlsKey,
    spki_der: &[u8],
    names: &NodeNames,
) -> Result<String, CaError> {
    let ca_key = ca_key.pair()?;
    let issuer = CertificateParams::from_ca_cert_pem(ca_cert_pem)
        .map_err(e)?
        .self_signed(&ca_key)
        .map_err(e)?;
    let public = SubjectPublicKeyInfo::from_der(spki_der).map_err(e)?;
    let cert = leaf_params(names, NODE_DAYS)?
        .signed_by(&public, &issuer, &ca_key)
        .map_err(e)?;
    Ok(cert.pem())
}

/// A self-signed certificate for `key` (before setup: the operator checks
/// its fingerprint, which the node logs and `install.sh` prints).
pub fn self_signed(key: &TlsKey, names: &NodeNames) -> Result<String, CaError> {
    let cert = leaf_params(names, CA_DAYS)?
        .self_signed(&key.pair()?)
        .map_err(e)?;
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_node_certificates_with_the_asked_names() {
        let (ca, key) = make_ca("lab", &[]).expect("ca");
        let fp = fingerprint(&ca).expect("fp");
        check_ca_shape(&ca).expect("a cluster CA");
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 64, "{fp}");
        let node = TlsKey::generate().expect("key");
        let names = NodeNames {
            node_id: "12D3KooWtest".into(),
            ips: vec!["10.0.0.5".parse().expect("ip")],
            dns: vec!["gpu1.local".into()],
        };
        let pem = issue(&ca, &key, &node.public_der().expect("spki"), &names).expect("issue");
        let der = der_of(&pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let ca_der = der_of(&ca).expect("ca der");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("ca parse");
        assert_eq!(cert.issuer(), ca_cert.subject());
        verify_issued(&pem, &ca).expect("signed by the CA");
        let (other, _) = make_ca("other", &[]).expect("other ca");
        assert!(verify_issued(&pem, &other).is_err());
        assert_eq!(
            cert.public_key().raw,
            node.public_der().expect("spki").as_slice()
        );
        assert!(format!("{:?}", node).contains("redacted"));
        assert!(check_ca_shape(&pem).is_err(), "a node certificate is no CA");
        assert!(TlsKey::from_pem("junk").is_err());
    }
}
