//! The private-address guard, in libcurl's `CURLOPT_OPENSOCKETFUNCTION`: it is handed the
//! address about to be connected to, after DNS resolution, and refuses what
//! [`crate::monitor::ip_guard`] forbids. Unsafe: it reads the C socket address and opens the
//! socket itself.

use std::cell::Cell;
use std::ffi::c_void;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use curl::easy::Easy2;

use super::transfer::{check, Collector};
use crate::monitor::ip_guard;

/// The private-address guard's state for one transfer. Boxed, so the open-socket callback can
/// hold a pointer to it while the collector moves.
#[derive(Default)]
pub(super) struct Guard {
    pub(super) refused: Cell<Option<(IpAddr, &'static str)>>,
}

/// libcurl's open-socket callback while the private-address guard is on: refuses reserved
/// addresses, and opens the socket as the curl crate would otherwise (close-on-exec).
pub(super) extern "C" fn open_guarded_socket(
    data: *mut c_void,
    _purpose: curl_sys::curlsocktype,
    address: *mut curl_sys::curl_sockaddr,
) -> curl_sys::curl_socket_t {
    // SAFETY: `data` is the collector's boxed guard, set with this callback and alive as long
    // as the easy handle; `address` is libcurl's, valid for the call, its `addr` as long as
    // `addrlen` says.
    let (guard, address) = unsafe { (&*(data as *const Guard), &*address) };
    let ip = unsafe { socket_ip(address) };
    let why = match ip {
        Some(ip) => ip_guard::reserved_range(ip),
        None => Some("not an internet address"),
    };
    if let Some(why) = why {
        guard
            .refused
            .set(Some((ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), why)));
        return curl_sys::CURL_SOCKET_BAD;
    }
    // SAFETY: a plain socket(2) call with the family, type and protocol libcurl asked for.
    let fd = unsafe {
        libc::socket(
            address.family,
            address.socktype | libc::SOCK_CLOEXEC,
            address.protocol,
        )
    };
    if fd < 0 {
        curl_sys::CURL_SOCKET_BAD
    } else {
        fd
    }
}

/// The IP address in a `curl_sockaddr`, if it holds one.
///
/// # Safety
/// `address.addr` must hold `address.addrlen` valid bytes, as libcurl guarantees.
pub(super) unsafe fn socket_ip(address: &curl_sys::curl_sockaddr) -> Option<IpAddr> {
    let addr = std::ptr::addr_of!(address.addr);
    let len = address.addrlen as usize;
    match address.family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            let v4 = std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>());
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let v6 = std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>());
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Makes `easy` open its sockets through [`open_guarded_socket`], with the collector's guard.
pub(super) fn install_guard(easy: &mut Easy2<Collector>) -> Result<(), curl::Error> {
    let guard: *const Guard = &*easy.get_ref().guard;
    let callback: curl_sys::curl_opensocket_callback = open_guarded_socket;
    // SAFETY: the callback has libcurl's signature, and the guard lives in the collector's box
    // as long as the handle does. `reset` puts the curl crate's own callback back.
    unsafe {
        let raw = easy.raw();
        check(curl_sys::curl_easy_setopt(
            raw,
            curl_sys::CURLOPT_OPENSOCKETFUNCTION,
            callback,
        ))?;
        check(curl_sys::curl_easy_setopt(
            raw,
            curl_sys::CURLOPT_OPENSOCKETDATA,
            guard as *mut c_void,
        ))?;
    }
    Ok(())
}
