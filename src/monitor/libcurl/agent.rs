//! The agent: one thread that drives libcurl's multi interface, fed jobs through a queue and
//! woken by `curl_multi_wakeup`; the loop of libcurl's own `multi-poll.c` example.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use curl::easy::Easy2;
use curl::multi::{Easy2Handle, Multi, MultiWaker};
use tokio::sync::oneshot;

use super::transfer::*;
use super::{Outcome, Request};

pub(super) struct Job {
    pub(super) request: Request,
    pub(super) reply: oneshot::Sender<Outcome>,
}

/// Jobs handed to the agent, and the state both sides need to see.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) jobs: Vec<Job>,
    /// The agent waits in libcurl: the next submitter wakes it.
    pub(super) parked: bool,
    /// Every handle has been dropped: the agent ends once its transfers have.
    pub(super) closed: bool,
    /// The agent's thread has ended (a bug, if not closed): jobs are refused, not queued.
    pub(super) stopped: bool,
}

/// The handle async code holds; the thread ends once the handle is dropped and its transfers
/// have finished.
pub struct Agent {
    pub(super) queue: Arc<Mutex<Queue>>,
    pub(super) waker: MultiWaker,
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

pub(super) struct Running {
    pub(super) handle: Easy2Handle<Collector>,
    pub(super) reply: oneshot::Sender<Outcome>,
}

/// Marks the agent stopped however its thread ends, a panic included, so that no caller waits
/// for a reply that cannot come: queued jobs are dropped, and later ones refused.
pub(super) struct StopGuard<'a>(&'a Mutex<Queue>);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        queue.stopped = true;
        queue.jobs.clear();
    }
}

/// The agent's loop: take new jobs, let libcurl work, hand back what finished, wait.
pub(super) fn run(multi: Multi, queue: &Mutex<Queue>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::libcurl::IpVersion;
    use http::Method;

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
}
