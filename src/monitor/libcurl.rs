//! A libcurl agent: one thread driving libcurl's multi interface, to which async code hands
//! transfers and from which it awaits their outcomes.
//!
//! `http_probe` runs every check through one of these (one agent per core). The agent keeps
//! its easy handles and reuses them, reads each outcome (status, timings, addresses, body) on
//! its own thread, and crosses to the runtime once per transfer, with the finished outcome; the
//! runtime wakes the agent only while it waits. isahc, which this replaces, built a new easy
//! handle per request and crossed between the threads several times per check: a check cost
//! about 115 µs of CPU through it and about 90 µs through this (BENCHMARKS.md, "Checker").
//!
//! The loop follows libcurl's own `multi-poll.c` example: `curl_multi_perform`, read the
//! finished transfers, `curl_multi_poll`, which `curl_multi_wakeup` ends from another thread.
//!
//! Two hooks reach below libcurl's options. TLS details come from a verify callback installed
//! in each connection's `SSL_CTX` (libcurl's `CURLOPT_SSL_CTX_FUNCTION`): it sees the
//! negotiated protocol, the cipher and the server's certificates while the handshake runs, so
//! a refused certificate is reported as fully as an accepted one. The private-address guard
//! is libcurl's `CURLOPT_OPENSOCKETFUNCTION`, which is handed the address about to be
//! connected to, after DNS resolution ([`crate::monitor::ip_guard`]).

use std::cell::Cell;
use std::ffi::c_void;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use curl::easy::{Easy2, Handler, IpResolve, List, WriteError};
use curl::multi::{Easy2Handle, Multi, MultiWaker};
use foreign_types::ForeignTypeRef;
use http::Method;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::ex_data::Index;
use openssl::ssl::{SslContext, SslContextBuilder};
use openssl::x509::{X509NameRef, X509StoreContext, X509StoreContextRef, X509};
use tokio::sync::oneshot;

use crate::monitor::check::TlsInfo;
use crate::monitor::ip_guard;

/// Which address family a transfer may connect over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpVersion {
    /// Whatever the name resolves to, IPv6 first when both work (libcurl's happy eyeballs).
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// What to fetch, and how. Built by the caller for each transfer.
#[derive(Debug)]
pub struct Request {
    /// The URL to fetch.
    pub url: Arc<str>,
    /// The HTTP method.
    pub method: Method,
    /// Header lines, `Name: value`.
    pub headers: Arc<[String]>,
    /// The request body, if any.
    pub body: Option<Bytes>,
    /// For the whole transfer, redirects included; libcurl enforces it.
    pub timeout: Duration,
    /// Redirects followed at most; 0 follows none.
    pub max_redirects: u32,
    /// Open a new connection and resolve the name afresh, instead of reusing either.
    pub fresh_connection: bool,
    /// Body bytes read at most; a longer body ends the transfer as too large.
    pub max_body_bytes: u64,
    /// Keep the body (up to `max_body_bytes`) in the outcome.
    pub keep_body: bool,
    /// The address family to connect over.
    pub ip_version: IpVersion,
    /// A proxy URL (`http://`, `https://`, `socks5://`, `socks5h://`), credentials included.
    pub proxy: Option<Arc<str>>,
    /// A PEM file of CA certificates to trust instead of the system's.
    pub ca_file: Option<Arc<Path>>,
    /// Refuse to connect to loopback, private, link-local and other reserved addresses.
    pub deny_private_addresses: bool,
}

/// libcurl's cumulative timers, from the start of the transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Times {
    /// Until the name was resolved.
    pub name_lookup: Duration,
    /// Until the TCP connection was open.
    pub connect: Duration,
    /// Until the TLS handshake was done (zero without TLS).
    pub app_connect: Duration,
    /// Until the first response byte.
    pub start_transfer: Duration,
    /// The whole transfer, redirects included.
    pub total: Duration,
}

/// What happened to a transfer.
#[derive(Debug)]
pub struct Outcome {
    /// libcurl's verdict. A body over the limit shows here as a write error, with
    /// `body_too_large` set.
    pub result: Result<(), curl::Error>,
    /// Whether the body was cut at `max_body_bytes`.
    pub body_too_large: bool,
    /// The last response's status code, if one arrived.
    pub status: Option<u16>,
    /// The last response's protocol, as on its status line (`HTTP/1.1`, `HTTP/2`).
    pub http_version: Option<&'static str>,
    /// The address connected to, `ip:port`.
    pub remote_addr: Option<String>,
    /// Body bytes read (at most the limit).
    pub body_bytes: u64,
    /// The body, when asked to keep it.
    pub body: Option<Vec<u8>>,
    /// libcurl's timers for the transfer.
    pub times: Times,
    /// The TLS connection and the server's leaf certificate, when a handshake got that far
    /// (`cert_expires_soon` left false: judging it is the caller's).
    pub tls: Option<TlsInfo>,
    /// The address the private-address guard refused, and why, when it refused one.
    pub refused_address: Option<(IpAddr, &'static str)>,
}

/// What the verify callback saw of a handshake.
struct Handshake {
    version: &'static str,
    cipher: Option<&'static str>,
    leaf: Option<X509>,
}

/// The private-address guard's state for one transfer. Boxed, so the open-socket callback can
/// hold a pointer to it while the collector moves.
#[derive(Default)]
struct Guard {
    refused: Cell<Option<(IpAddr, &'static str)>>,
}

/// Collects one transfer's response on the agent's thread.
#[derive(Default)]
struct Collector {
    limit: u64,
    keep: bool,
    read: u64,
    body: Vec<u8>,
    too_large: bool,
    version: Option<&'static str>,
    /// Filled in by the verify callback, which runs inside OpenSSL during the handshake.
    handshake: HandshakeSlot,
    guard: Box<Guard>,
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        let Some(index) = handshake_index() else {
            // OpenSSL could not allocate the index: the check goes on without TLS details.
            return Ok(());
        };
        // SAFETY: libcurl (OpenSSL backend, the only one built) hands over the SSL_CTX of the
        // connection being set up, before its handshake. The builder only borrows it: it is
        // never dropped, so the context stays libcurl's to free (and, with it, our slot).
        let mut context = ManuallyDrop::new(unsafe { SslContextBuilder::from_ptr(cx.cast()) });
        context.set_ex_data(index, Arc::clone(&self.handshake));
        // libcurl sets SSL_VERIFY_NONE and judges the verification result itself after the
        // handshake: keep whatever mode it chose, and add a callback that only looks. Set
        // through openssl-sys because the `openssl` crate's trampoline expects an SSL made by
        // its own `Ssl::new`, and libcurl makes its own.
        // SAFETY: `cx` is a valid SSL_CTX, and the callback has OpenSSL's signature.
        unsafe {
            let mode = openssl_sys::SSL_CTX_get_verify_mode(cx.cast());
            openssl_sys::SSL_CTX_set_verify(cx.cast(), mode, Some(record_certificate));
            SSL_CTX_set_info_callback(cx.cast(), Some(record_cipher));
        }
        Ok(())
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
const SSL_CB_HANDSHAKE_DONE: std::ffi::c_int = 0x20;

type HandshakeSlot = Arc<Mutex<Option<Handshake>>>;

/// Where each connection's SSL_CTX keeps the slot of the transfer that opened it; OpenSSL
/// drops the slot's reference when it frees the context.
fn handshake_index() -> Option<Index<SslContext, HandshakeSlot>> {
    static INDEX: OnceLock<Option<Index<SslContext, HandshakeSlot>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// The handshake slot of the transfer that opened the connection of `ssl`.
fn slot_of(ssl: &openssl::ssl::SslRef) -> Option<&HandshakeSlot> {
    handshake_index().and_then(|index| ssl.ssl_context().ex_data(index))
}

/// OpenSSL's info callback: once the handshake is done (libcurl lets it finish whatever the
/// certificate), the negotiated protocol and cipher are final.
unsafe extern "C" fn record_cipher(
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
extern "C" fn record_certificate(
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

/// libcurl's open-socket callback while the private-address guard is on: refuses reserved
/// addresses, and opens the socket as the curl crate would otherwise (close-on-exec).
extern "C" fn open_guarded_socket(
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
unsafe fn socket_ip(address: &curl_sys::curl_sockaddr) -> Option<IpAddr> {
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

struct Job {
    request: Request,
    reply: oneshot::Sender<Outcome>,
}

/// Jobs handed to the agent, and the state both sides need to see.
#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// The agent waits in libcurl: the next submitter wakes it.
    parked: bool,
    /// Every handle has been dropped: the agent ends once its transfers have.
    closed: bool,
    /// The agent's thread has ended (a bug, if not closed): jobs are refused, not queued.
    stopped: bool,
}

/// The handle async code holds; the thread ends once the handle is dropped and its transfers
/// have finished.
pub struct Agent {
    queue: Arc<Mutex<Queue>>,
    waker: MultiWaker,
}

impl Agent {
    /// Starts an agent on a thread of its own named `name`.
    pub fn spawn(name: String) -> io::Result<Agent> {
        let queue = Arc::new(Mutex::new(Queue::default()));
        let shared = Arc::clone(&queue);
        // A multi handle stays on the thread that made it; only its waker comes back.
        let (give, take) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name(name).spawn(move || {
            let multi = Multi::new();
            if give.send(multi.waker()).is_ok() {
                run(multi, &shared);
            }
        })?;
        let waker = take
            .recv()
            .map_err(|_| io::Error::other("libcurl's thread ended as it started"))?;
        Ok(Agent { queue, waker })
    }

    /// Runs one transfer. `None` if the agent's thread has ended, which only a bug does.
    pub async fn transfer(&self, request: Request) -> Option<Outcome> {
        let (reply, outcome) = oneshot::channel();
        if self.submit(Job { request, reply }) {
            let _ = self.waker.wakeup();
        }
        outcome.await.ok()
    }

    /// Queues a job; true if the agent waits and must be woken (once, by this caller). A
    /// stopped agent drops the job, and with it the reply its caller awaits.
    fn submit(&self, job: Job) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.stopped {
            return false;
        }
        queue.jobs.push(job);
        std::mem::take(&mut queue.parked)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        let _ = self.waker.wakeup();
    }
}

struct Running {
    handle: Easy2Handle<Collector>,
    reply: oneshot::Sender<Outcome>,
}

/// Marks the agent stopped however its thread ends, a panic included, so that no caller waits
/// for a reply that cannot come: queued jobs are dropped, and later ones refused.
struct StopGuard<'a>(&'a Mutex<Queue>);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        queue.stopped = true;
        queue.jobs.clear();
    }
}

/// The agent's loop: take new jobs, let libcurl work, hand back what finished, wait.
fn run(multi: Multi, queue: &Mutex<Queue>) {
    let _stop = StopGuard(queue);
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    let mut running: Vec<Option<Running>> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let mut idle: Vec<Easy2<Collector>> = Vec::new();
    let mut arrived = Vec::new();
    let mut finished = Vec::new();
    loop {
        let closed = {
            let mut queue = lock();
            std::mem::swap(&mut arrived, &mut queue.jobs);
            queue.closed
        };
        for job in arrived.drain(..) {
            start(&multi, job, &mut running, &mut free_slots, &mut idle);
        }
        if closed {
            // The probe has stopped: transfers nobody awaits any more end now, not at their
            // timeout.
            for (token, slot) in running.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|r| r.reply.is_closed()) {
                    if let Some(Running { handle, .. }) = slot.take() {
                        let _ = multi.remove2(handle);
                        free_slots.push(token);
                    }
                }
            }
            if free_slots.len() == running.len() {
                return;
            }
        }
        if let Err(e) = multi.perform() {
            // Not one transfer's failure but the multi handle's: nothing can run any more.
            panic!("libcurl's multi handle failed: {e}");
        }
        multi.messages(|message| {
            // Read through the handle, so a failure carries libcurl's own words (its error
            // buffer: which host, which port, which certificate).
            let Ok(token) = message.token() else { return };
            if let Some(Some(transfer)) = running.get(token) {
                if let Some(result) = message.result_for2(&transfer.handle) {
                    finished.push((token, result));
                }
            }
        });
        for (token, result) in finished.drain(..) {
            let Some(Running { handle, reply }) = running[token].take() else {
                continue;
            };
            free_slots.push(token);
            if let Ok(mut easy) = multi.remove2(handle) {
                let _ = reply.send(outcome(&mut easy, result));
                idle.push(easy);
            }
        }
        {
            let mut queue = lock();
            if !queue.jobs.is_empty() {
                continue;
            }
            queue.parked = true;
        }
        // libcurl shortens the wait to its own next timeout; a wakeup ends it, and one sent
        // before the wait began (by a submitter, or by the last handle's drop) ends it at once.
        let _ = multi.poll(&mut [], Duration::from_secs(1));
        lock().parked = false;
    }
}

/// libcurl's code for a transfer that could not start; given when the multi handle refuses one.
const CURLE_FAILED_INIT: u32 = 2;

fn start(
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

fn configure(easy: &mut Easy2<Collector>, request: &Request) -> Result<(), curl::Error> {
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
        let guard: *const Guard = &*easy.get_ref().guard;
        let callback: curl_sys::curl_opensocket_callback = open_guarded_socket;
        // SAFETY: the callback has libcurl's signature, and the guard lives in the collector's
        // box as long as the handle does. `reset` puts the curl crate's own callback back.
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

fn check(code: curl_sys::CURLcode) -> Result<(), curl::Error> {
    if code == curl_sys::CURLE_OK {
        Ok(())
    } else {
        Err(curl::Error::new(code))
    }
}

fn empty_outcome() -> Outcome {
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

fn outcome(easy: &mut Easy2<Collector>, result: Result<(), curl::Error>) -> Outcome {
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

/// The handshake's facts in the schema's terms; `None` without a certificate to describe.
fn tls_info(handshake: Handshake) -> Option<TlsInfo> {
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

fn system_time(time: &Asn1TimeRef) -> Option<SystemTime> {
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
fn distinguished_name(name: &X509NameRef) -> String {
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

fn escape_dn_value(value: &str) -> String {
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

    fn collect(limit: u64, keep: bool, chunks: &[&[u8]]) -> (Collector, Vec<usize>) {
        let mut collector = Collector::default();
        collector.start(limit, keep);
        let taken = chunks
            .iter()
            .map(|chunk| collector.write(chunk).unwrap())
            .collect();
        (collector, taken)
    }

    #[tokio::test]
    async fn transfers_nobody_awaits_end_when_the_agent_is_dropped() {
        use std::io::Read;

        // A server that accepts and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let request = Request {
            url: format!("http://{}/", listener.local_addr().unwrap()).into(),
            method: Method::GET,
            headers: Arc::from(Vec::new()),
            body: None,
            timeout: Duration::from_secs(120),
            max_redirects: 0,
            fresh_connection: true,
            max_body_bytes: 1024,
            keep_body: false,
            ip_version: IpVersion::Any,
            proxy: None,
            ca_file: None,
            deny_private_addresses: false,
        };
        let agent = Arc::new(Agent::spawn("test-curl".into()).unwrap());
        let waiting = tokio::spawn({
            let agent = Arc::clone(&agent);
            async move { agent.transfer(request).await }
        });
        let mut connection = tokio::task::spawn_blocking(move || listener.accept().unwrap().0)
            .await
            .unwrap();

        // The probe stops: its check is dropped, then the agent.
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        drop(agent);

        // The connection closes now, long before the transfer's timeout.
        connection
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buffer = [0; 4096];
        while connection
            .read(&mut buffer)
            .expect("the agent closes the connection")
            > 0
        {}
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
