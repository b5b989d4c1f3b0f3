//! One transfer: an easy handle set up for a probe (fresh connection, no caches, the guard and
//! the TLS hooks), its body collected up to a limit, and its outcome read when it ends.

use std::ffi::c_void;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use curl::easy::{Easy2, Handler, IpResolve, List, WriteError};
use curl::multi::Multi;

use super::agent::*;
use super::guard::*;
use super::tls::*;
use super::{IpVersion, Outcome, Request, Times};

/// Collects one transfer's response on the agent's thread.
#[derive(Default)]
pub(super) struct Collector {
    pub(super) limit: u64,
    pub(super) keep: bool,
    pub(super) read: u64,
    pub(super) body: Vec<u8>,
    pub(super) too_large: bool,
    pub(super) version: Option<&'static str>,
    /// Filled in by the verify callback, which runs inside OpenSSL during the handshake.
    pub(super) handshake: HandshakeSlot,
    pub(super) guard: Box<Guard>,
}

impl Collector {
    fn start(&mut self, limit: u64, keep: bool) {
        *self = Collector {
            limit,
            keep,
            handshake: std::mem::take(&mut self.handshake),
            guard: std::mem::take(&mut self.guard),
            ..Collector::default()
        };
        *lock(&self.handshake) = None;
        self.guard.refused.set(None);
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Handler for Collector {
    fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        let len = data.len() as u64;
        if self.read + len > self.limit {
            self.read = self.limit;
            self.too_large = true;
            // Less than offered: libcurl ends the transfer with a write error.
            return Ok(0);
        }
        self.read += len;
        if self.keep {
            self.body.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn header(&mut self, line: &[u8]) -> bool {
        // Every response's status line comes through, redirects' too; the last one counts.
        if let Some(rest) = line.strip_prefix(b"HTTP/") {
            self.version = Some(match rest.split(|&b| b == b' ').next() {
                Some(b"1.0") => "HTTP/1.0",
                Some(b"1.1") => "HTTP/1.1",
                Some(b"2" | b"2.0") => "HTTP/2",
                Some(b"3" | b"3.0") => "HTTP/3",
                _ => "unknown",
            });
        }
        true
    }

    fn ssl_ctx(&mut self, cx: *mut c_void) -> Result<(), curl::Error> {
        // SAFETY: libcurl (OpenSSL backend, the only one built) calls this with the SSL_CTX of
        // the connection being set up, before its handshake.
        unsafe { watch_handshake(cx, &self.handshake) };
        Ok(())
    }
}

/// libcurl's code for a transfer that could not start; given when the multi handle refuses one.
pub(super) const CURLE_FAILED_INIT: u32 = 2;

pub(super) fn start(
    multi: &Multi,
    job: Job,
    running: &mut Vec<Option<Running>>,
    free_slots: &mut Vec<usize>,
    idle: &mut Vec<Easy2<Collector>>,
) {
    let Job { request, reply } = job;
    let mut easy = match idle.pop() {
        Some(mut easy) => {
            // Back to libcurl's defaults, so no option of the previous request carries over;
            // what the handle keeps (connections, DNS and TLS caches) `configure` governs.
            easy.reset();
            easy
        }
        None => Easy2::new(Collector::default()),
    };
    easy.get_mut()
        .start(request.max_body_bytes, request.keep_body);
    if let Err(e) = configure(&mut easy, &request) {
        let _ = reply.send(Outcome {
            result: Err(e),
            ..empty_outcome()
        });
        idle.push(easy);
        return;
    }
    let token = free_slots.pop().unwrap_or_else(|| {
        running.push(None);
        running.len() - 1
    });
    match multi.add2(easy) {
        Ok(mut handle) => {
            let _ = handle.set_token(token);
            running[token] = Some(Running { handle, reply });
        }
        Err(_) => {
            free_slots.push(token);
            let _ = reply.send(Outcome {
                result: Err(curl::Error::new(CURLE_FAILED_INIT)),
                ..empty_outcome()
            });
        }
    }
}

pub(super) fn configure(easy: &mut Easy2<Collector>, request: &Request) -> Result<(), curl::Error> {
    easy.url(&request.url)?;
    easy.signal(false)?;
    easy.timeout(request.timeout)?;
    easy.accept_encoding("")?;
    if request.max_redirects > 0 {
        easy.follow_location(true)?;
        easy.max_redirections(request.max_redirects)?;
    }
    if request.fresh_connection {
        easy.fresh_connect(true)?;
        easy.forbid_reuse(true)?;
        easy.dns_cache_timeout(Duration::ZERO)?;
        // A reused handle would otherwise resume its last TLS session: a shorter handshake
        // than a visitor's, and a `tls` phase that is not the real one.
        easy.ssl_sessionid_cache(false)?;
    }
    easy.ip_resolve(match request.ip_version {
        IpVersion::Any => IpResolve::Any,
        IpVersion::V4 => IpResolve::V4,
        IpVersion::V6 => IpResolve::V6,
    })?;
    if let Some(proxy) = &request.proxy {
        easy.proxy(proxy)?;
    }
    if let Some(ca_file) = &request.ca_file {
        easy.cainfo(ca_file)?;
    }
    if request.deny_private_addresses {
        install_guard(easy)?;
    }
    match (request.method.as_str(), &request.body) {
        ("GET", None) => easy.get(true)?,
        ("HEAD", None) => easy.nobody(true)?,
        (method, body) => {
            if let Some(body) = body {
                easy.post_fields_copy(body)?;
            }
            easy.custom_request(method)?;
        }
    }
    let mut headers = List::new();
    for line in request.headers.iter() {
        headers.append(line)?;
    }
    easy.http_headers(headers)?;
    Ok(())
}

pub(super) fn check(code: curl_sys::CURLcode) -> Result<(), curl::Error> {
    if code == curl_sys::CURLE_OK {
        Ok(())
    } else {
        Err(curl::Error::new(code))
    }
}

pub(super) fn empty_outcome() -> Outcome {
    Outcome {
        result: Ok(()),
        body_too_large: false,
        status: None,
        http_version: None,
        remote_addr: None,
        body_bytes: 0,
        body: None,
        times: Times::default(),
        tls: None,
        refused_address: None,
    }
}

pub(super) fn outcome(easy: &mut Easy2<Collector>, result: Result<(), curl::Error>) -> Outcome {
    let status = easy
        .response_code()
        .ok()
        .filter(|&code| code != 0)
        .and_then(|code| u16::try_from(code).ok());
    let remote_addr = match (easy.primary_ip(), easy.primary_port()) {
        (Ok(Some(ip)), Ok(port)) if !ip.is_empty() => Some(if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }),
        _ => None,
    };
    let time = |t: Result<Duration, curl::Error>| t.unwrap_or_default();
    let times = Times {
        name_lookup: time(easy.namelookup_time()),
        connect: time(easy.connect_time()),
        app_connect: time(easy.appconnect_time()),
        start_transfer: time(easy.starttransfer_time()),
        total: time(easy.total_time()),
    };
    let collector = easy.get_mut();
    let tls = lock(&collector.handshake).take().and_then(tls_info);
    Outcome {
        result,
        body_too_large: collector.too_large,
        status,
        http_version: status.and(collector.version),
        remote_addr,
        body_bytes: collector.read,
        body: collector.keep.then(|| std::mem::take(&mut collector.body)),
        times,
        tls,
        refused_address: collector.guard.refused.take(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(limit: u64, keep: bool, chunks: &[&[u8]]) -> (Collector, Vec<usize>) {
        let mut collector = Collector::default();
        collector.start(limit, keep);
        let taken = chunks
            .iter()
            .map(|chunk| collector.write(chunk).unwrap())
            .collect();
        (collector, taken)
    }

    #[test]
    fn bodies_are_counted_kept_or_cut_at_the_limit() {
        let (kept, taken) = collect(10, true, &[b"abcd", b"efgh"]);
        assert_eq!(taken, [4, 4]);
        assert_eq!(
            (kept.read, kept.body.as_slice(), kept.too_large),
            (8, &b"abcdefgh"[..], false)
        );

        let (counted, _) = collect(10, false, &[b"abcd", b"efgh"]);
        assert_eq!((counted.read, counted.body.len()), (8, 0));

        // Taking less than offered makes libcurl end the transfer (a write error).
        let (cut, taken) = collect(10, true, &[b"abcdef", b"ghijkl"]);
        assert_eq!(taken, [6, 0]);
        assert_eq!((cut.read, cut.too_large), (10, true));
    }

    #[test]
    fn a_reused_collector_starts_empty() {
        let (mut collector, _) = collect(4, true, &[b"abc", b"de"]);
        collector.version = Some("HTTP/2");
        collector.start(100, true);
        assert_eq!(
            (
                collector.read,
                collector.body.len(),
                collector.too_large,
                collector.version
            ),
            (0, 0, false, None)
        );
    }

    #[test]
    fn the_last_status_line_gives_the_version() {
        let mut collector = Collector::default();
        for line in [
            &b"HTTP/1.1 301 Moved Permanently\r\n"[..],
            b"Location: /next\r\n",
            b"HTTP/2 200\r\n",
            b"content-type: text/html\r\n",
        ] {
            assert!(collector.header(line));
        }
        assert_eq!(collector.version, Some("HTTP/2"));
        collector.header(b"HTTP/1.0 200 OK\r\n");
        assert_eq!(collector.version, Some("HTTP/1.0"));
    }
}
