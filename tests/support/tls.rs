//! Certificates made on the spot with OpenSSL, for tests of TLS failures and verification.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

pub fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `host` signed by `issuer` (or by itself), valid for a day.
pub fn certificate(
    host: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    is_ca: bool,
) -> X509 {
    let validity = (
        Asn1Time::days_from_now(0).unwrap(),
        Asn1Time::days_from_now(1).unwrap(),
    );
    certificate_with(host, &[host], key, issuer, is_ca, validity)
}

/// A certificate for `subject` (its CN), naming `sans` as DNS names (a leaf only), signed by
/// `issuer` (or by itself), valid from the first time of `validity` to the second.
pub fn certificate_with(
    subject: &str,
    sans: &[&str],
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    is_ca: bool,
    validity: (Asn1Time, Asn1Time),
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", subject).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_pubkey(key).unwrap();
    builder.set_not_before(&validity.0).unwrap();
    builder.set_not_after(&validity.1).unwrap();
    if is_ca {
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    } else {
        let mut san = SubjectAlternativeName::new();
        for name in sans {
            san.dns(name);
        }
        let san = san
            .build(&builder.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
            .unwrap();
        builder.append_extension(san).unwrap();
    }
    match issuer {
        Some((ca, ca_key)) => {
            builder.set_issuer_name(ca.subject_name()).unwrap();
            builder.sign(ca_key, MessageDigest::sha256()).unwrap();
        }
        None => {
            builder.set_issuer_name(&name).unwrap();
            builder.sign(key, MessageDigest::sha256()).unwrap();
        }
    }
    builder.build()
}

/// A self-signed certificate for `host` and its key.
pub fn self_signed(host: &str) -> (X509, PKey<Private>) {
    let key = key();
    (certificate(host, &key, None, false), key)
}
