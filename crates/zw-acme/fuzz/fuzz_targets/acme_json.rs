//! Traefik's `acme.json`, read as a user's file may be: any bytes parse or fail with an
//! error naming the file; every resolver's data reads or fails; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("acme.json");
    if let Ok(st) = zw_acme::storage::Storage::parse(path, data) {
        let names: Vec<String> = st.resolvers().map(str::to_string).collect();
        for name in names {
            if let Ok(r) = st.resolver(&name) {
                for c in &r.certificates {
                    let _ = c.names();
                }
            }
        }
    }
});
