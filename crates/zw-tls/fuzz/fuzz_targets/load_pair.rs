//! Certificate and key loading: any bytes, as certificate and key PEM (split at the first
//! NUL), load or fail with an error; they never panic. The same bytes as a client's DER
//! certificate give `passTLSClientCert.info` something or nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cert, key) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    if let Ok(c) = zw_tls::load_pair(cert, key) {
        let store = zw_tls::CertStore::new(std::slice::from_ref(&c), c.key.clone());
        for name in &c.names {
            let _ = store.lookup(name);
        }
    }
    let _ = zw_tls::client_roots(&[data.to_vec()]);
    let all = zw_tls::DnOptions {
        country: true,
        province: true,
        locality: true,
        organization: true,
        organizational_unit: true,
        common_name: true,
        serial_number: true,
        domain_component: true,
    };
    let info = zw_tls::CertInfoOptions {
        not_after: true,
        not_before: true,
        sans: true,
        serial_number: true,
        subject: Some(all.clone()),
        issuer: Some(all),
    };
    let der = zw_tls::rustls::pki_types::CertificateDer::from(data);
    let _ = zw_tls::cert_info(std::slice::from_ref(&der), &info);
});
