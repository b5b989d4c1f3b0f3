//! The TLS hooks, and the unsafe code they need: a verify callback and an info callback in each
//! connection's `SSL_CTX` record the protocol, the cipher and the server's certificates while
//! the handshake runs, so that a refused certificate is reported as fully as an accepted one.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foreign_types::ForeignTypeRef;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::ex_data::Index;
use openssl::ssl::{SslContext, SslContextBuilder};
use openssl::x509::{X509NameRef, X509StoreContext, X509StoreContextRef, X509};

use super::transfer::*;
use crate::monitor::check::TlsInfo;

/// What the verify callback saw of a handshake.
pub(super) struct Handshake {
    pub(super) version: &'static str,
    pub(super) cipher: Option<&'static str>,
    pub(super) leaf: Option<X509>,
}

/// Installs the hooks that record `slot`'s handshake in the connection's `SSL_CTX`.
///
/// # Safety
/// `cx` must be the valid `SSL_CTX` libcurl hands to its `CURLOPT_SSL_CTX_FUNCTION`, before
/// the handshake.
pub(super) unsafe fn watch_handshake(cx: *mut c_void, slot: &HandshakeSlot) {
    let Some(index) = handshake_index() else {
        // OpenSSL could not allocate the index: the check goes on without TLS details.
        return;
    };
    // SAFETY: `cx` is a valid SSL_CTX (the caller's promise). The builder only borrows it: it
    // is never dropped, so the context stays libcurl's to free (and, with it, our slot).
    let mut context = ManuallyDrop::new(unsafe { SslContextBuilder::from_ptr(cx.cast()) });
    context.set_ex_data(index, Arc::clone(slot));
    // libcurl sets SSL_VERIFY_NONE and judges the verification result itself after the
    // handshake: keep whatever mode it chose, and add a callback that only looks. Set through
    // openssl-sys because the `openssl` crate's trampoline expects an SSL made by its own
    // `Ssl::new`, and libcurl makes its own.
    // SAFETY: `cx` is a valid SSL_CTX, and the callbacks have OpenSSL's signatures.
    unsafe {
        let mode = openssl_sys::SSL_CTX_get_verify_mode(cx.cast());
        openssl_sys::SSL_CTX_set_verify(cx.cast(), mode, Some(record_certificate));
        SSL_CTX_set_info_callback(cx.cast(), Some(record_cipher));
    }
}

// OpenSSL's info callback, which openssl-sys does not declare. libcurl sets none of its own.
extern "C" {
    fn SSL_CTX_set_info_callback(
        ctx: *mut openssl_sys::SSL_CTX,
        callback: Option<
            unsafe extern "C" fn(*const openssl_sys::SSL, std::ffi::c_int, std::ffi::c_int),
        >,
    );
}

/// `SSL_CB_HANDSHAKE_DONE` in OpenSSL's `ssl.h`.
pub(super) const SSL_CB_HANDSHAKE_DONE: std::ffi::c_int = 0x20;

pub(super) type HandshakeSlot = Arc<Mutex<Option<Handshake>>>;

/// Where each connection's SSL_CTX keeps the slot of the transfer that opened it; OpenSSL
/// drops the slot's reference when it frees the context.
pub(super) fn handshake_index() -> Option<Index<SslContext, HandshakeSlot>> {
    static INDEX: OnceLock<Option<Index<SslContext, HandshakeSlot>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// The handshake slot of the transfer that opened the connection of `ssl`.
pub(super) fn slot_of(ssl: &openssl::ssl::SslRef) -> Option<&HandshakeSlot> {
    handshake_index().and_then(|index| ssl.ssl_context().ex_data(index))
}

/// OpenSSL's info callback: once the handshake is done (libcurl lets it finish whatever the
/// certificate), the negotiated protocol and cipher are final.
pub(super) unsafe extern "C" fn record_cipher(
    ssl: *const openssl_sys::SSL,
    event: std::ffi::c_int,
    _value: std::ffi::c_int,
) {
    if event & SSL_CB_HANDSHAKE_DONE == 0 {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: OpenSSL calls this with the connection whose handshake it reports.
        let ssl = unsafe { openssl::ssl::SslRef::from_ptr(ssl.cast_mut()) };
        let Some(slot) = slot_of(ssl) else { return };
        let mut slot = lock(slot);
        let handshake = slot.get_or_insert_with(|| Handshake {
            version: "",
            cipher: None,
            leaf: None,
        });
        handshake.version = ssl.version_str();
        handshake.cipher = ssl
            .current_cipher()
            .map(|c| c.standard_name().unwrap_or(c.name()));
    });
}

/// OpenSSL's verify callback: notes the server's certificate from the first time it is called,
/// and returns OpenSSL's own verdict unchanged.
pub(super) extern "C" fn record_certificate(
    preverified: std::ffi::c_int,
    store: *mut openssl_sys::X509_STORE_CTX,
) -> std::ffi::c_int {
    // Nothing here should panic; if something does, the check only loses its TLS details.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: OpenSSL calls this with the store context of the verification under way.
        let store = unsafe { X509StoreContextRef::from_ptr(store) };
        let Some(ssl) = X509StoreContext::ssl_idx()
            .ok()
            .and_then(|index| store.ex_data(index))
        else {
            return;
        };
        let Some(slot) = slot_of(ssl) else { return };
        let mut slot = lock(slot);
        let handshake = slot.get_or_insert_with(|| Handshake {
            version: ssl.version_str(),
            cipher: None,
            leaf: None,
        });
        if handshake.leaf.is_none() {
            // On a client, the chain the server sent starts with its own certificate.
            handshake.leaf = ssl
                .peer_cert_chain()
                .and_then(|chain| chain.iter().next())
                .map(|cert| cert.to_owned());
        }
    });
    preverified
}

/// The handshake's facts in the schema's terms; `None` without a certificate to describe.
pub(super) fn tls_info(handshake: Handshake) -> Option<TlsInfo> {
    let leaf = handshake.leaf?;
    let sans = leaf
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| {
                    name.dnsname().map(str::to_owned).or_else(|| {
                        name.ipaddress().and_then(|bytes| match bytes.len() {
                            4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
                            16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
                            _ => None,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(TlsInfo {
        version: handshake.version.to_owned(),
        cipher: handshake.cipher.unwrap_or("unknown").to_owned(),
        cert_not_before: system_time(leaf.not_before())?,
        cert_not_after: system_time(leaf.not_after())?,
        cert_issuer: distinguished_name(leaf.issuer_name()),
        cert_subject: distinguished_name(leaf.subject_name()),
        cert_sans: sans,
        cert_expires_soon: false,
    })
}

pub(super) fn system_time(time: &Asn1TimeRef) -> Option<SystemTime> {
    let diff = Asn1Time::from_unix(0).ok()?.diff(time).ok()?;
    let seconds = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    Some(if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    })
}

/// A distinguished name as RFC 4514 writes it: the last component first, `,` between them,
/// and the characters it reserves escaped.
pub(super) fn distinguished_name(name: &X509NameRef) -> String {
    let mut parts: Vec<String> =
        name.entries()
            .map(|entry| {
                let nid = entry.object().nid();
                let key = nid
                    .short_name()
                    .map(str::to_owned)
                    .unwrap_or_else(|_| entry.object().to_string());
                let value = entry.data().to_string().unwrap_or_else(|_| {
                    String::from_utf8_lossy(entry.data().as_slice()).into_owned()
                });
                format!("{key}={}", escape_dn_value(&value))
            })
            .collect();
    parts.reverse();
    parts.join(",")
}

pub(super) fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let leading = i == 0 && (c == ' ' || c == '#');
        let trailing = i == last && c == ' ';
        if leading || trailing || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_are_written_as_rfc_4514_says() {
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("C", "US").unwrap();
        name.append_entry_by_text("O", "Example, Inc.").unwrap();
        name.append_entry_by_text("CN", "#1 site").unwrap();
        let name = name.build();
        assert_eq!(
            distinguished_name(&name),
            "CN=\\#1 site,O=Example\\, Inc.,C=US"
        );
    }

    #[test]
    fn certificate_times_become_system_times() {
        let time = Asn1Time::from_unix(1_797_776_000).unwrap();
        assert_eq!(
            system_time(&time),
            Some(UNIX_EPOCH + Duration::from_secs(1_797_776_000))
        );
    }
}
