//! What `passTLSClientCert.info` passes upstream of a client's certificates, written as
//! Traefik writes it (`pkg/middlewares/passtlsclientcert`, `getCertInfo`): per
//! certificate, the chosen fields `Subject="…"`, `Issuer="…"`, `SerialNumber="…"`,
//! `NB="…"`, `NA="…"`, `SAN="…"` joined by `;`; certificates joined by `,`. A
//! distinguished name lists `DC=` (as they come), then `C`, `ST`, `L`, `O`, `OU` (subject
//! only), `SN`, `CN`, each `K=V` and comma-separated; SANs are the DNS names, then the
//! e-mail addresses, the IP addresses, the URIs. A certificate that cannot be parsed gives
//! an empty entry.

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

/// The parts of each certificate to pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfoOptions {
    pub not_after: bool,
    pub not_before: bool,
    pub sans: bool,
    pub serial_number: bool,
    pub subject: Option<DnOptions>,
    pub issuer: Option<DnOptions>,
}

/// The parts of a distinguished name to pass (`organizational_unit`: subject only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnOptions {
    pub country: bool,
    pub province: bool,
    pub locality: bool,
    pub organization: bool,
    pub organizational_unit: bool,
    pub common_name: bool,
    pub serial_number: bool,
    pub domain_component: bool,
}

/// The `DC` and subject `serialNumber` attribute types.
const OID_DC: &str = "0.9.2342.19200300.100.1.25";
const OID_SERIAL: &str = "2.5.4.5";

fn strs<'a, 'b: 'a>(
    it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
) -> Vec<&'a str> {
    it.filter_map(|a| a.as_str().ok()).collect()
}

fn dn(name: &X509Name<'_>, o: &DnOptions) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut all = |want: bool, key: &str, values: Vec<&str>| {
        if want {
            parts.extend(
                values
                    .into_iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("{key}={v}")),
            );
        }
    };
    let by_oid = |oid: &str| -> Vec<&str> {
        name.iter_attributes()
            .filter(|a| a.attr_type().to_id_string() == oid)
            .filter_map(|a| a.as_str().ok())
            .collect()
    };
    all(o.domain_component, "DC", by_oid(OID_DC));
    all(o.country, "C", strs(name.iter_country()));
    all(o.province, "ST", strs(name.iter_state_or_province()));
    all(o.locality, "L", strs(name.iter_locality()));
    all(o.organization, "O", strs(name.iter_organization()));
    all(
        o.organizational_unit,
        "OU",
        strs(name.iter_organizational_unit()),
    );
    // One serial number and one common name: Go's pkix.Name keeps the last of each.
    all(
        o.serial_number,
        "SN",
        by_oid(OID_SERIAL).into_iter().last().into_iter().collect(),
    );
    all(
        o.common_name,
        "CN",
        strs(name.iter_common_name())
            .into_iter()
            .last()
            .into_iter()
            .collect(),
    );
    parts.join(",")
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let names = &ext.value.general_names;
    let mut out: Vec<String> = Vec::new();
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    }));
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::RFC822Name(e) => Some(e.to_string()),
        _ => None,
    }));
    out.extend(names.iter().filter_map(|n| {
        match n {
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        }
    }));
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    }));
    out
}

fn one(der: &[u8], o: &CertInfoOptions) -> String {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return String::new();
    };
    let mut fields = Vec::new();
    if let Some(s) = &o.subject {
        let v = dn(cert.subject(), s);
        if !v.is_empty() {
            fields.push(format!("Subject=\"{v}\""));
        }
    }
    if let Some(i) = &o.issuer {
        let v = dn(
            cert.issuer(),
            &DnOptions {
                organizational_unit: false,
                ..i.clone()
            },
        );
        if !v.is_empty() {
            fields.push(format!("Issuer=\"{v}\""));
        }
    }
    if o.serial_number {
        fields.push(format!("SerialNumber=\"{}\"", cert.serial));
    }
    if o.not_before {
        fields.push(format!("NB=\"{}\"", cert.validity().not_before.timestamp()));
    }
    if o.not_after {
        fields.push(format!("NA=\"{}\"", cert.validity().not_after.timestamp()));
    }
    if o.sans {
        let s = sans(&cert);
        if !s.is_empty() {
            fields.push(format!("SAN=\"{}\"", s.join(",")));
        }
    }
    fields.join(";")
}

/// The info of `chain` (the client's certificate first), not yet escaped.
pub fn cert_info(chain: &[CertificateDer<'_>], o: &CertInfoOptions) -> String {
    chain
        .iter()
        .map(|c| one(c.as_ref(), o))
        .collect::<Vec<_>>()
        .join(",")
}
