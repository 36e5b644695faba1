//! TLS plaintext written before its socket is known.
//!
//! A TLS library working on memory buffers (node, Python's asyncio) encrypts a write into
//! memory; the application writes the ciphertext to the socket after the library's call, on
//! the same thread. Until the session's first read ties it to a socket (`tls.rs`), the kernel
//! cannot name the socket of such a write - a client's first request - and sends its plaintext
//! without one. It waits here for its thread's next socket write that carries a TLS
//! application-data record, whose socket it then takes. Most threads of such programs write
//! one connection at a time; a write is tied only if that socket write comes within
//! [`WAIT_NS`] and is large enough to hold it.

use std::collections::VecDeque;

use socktrace_common::DataEvent;

use crate::FastMap;

/// How long a write waits for its ciphertext: the application writes it as soon as the
/// library's call returns.
pub(super) const WAIT_NS: u64 = 100_000_000;
/// Most writes waiting per thread (a client that writes many requests before any leaves).
const MAX_PER_THREAD: usize = 16;
/// Most threads with writes waiting.
const MAX_THREADS: usize = 4096;
/// Fewest bytes a TLS record adds to its plaintext: 5 of header and a 16-byte tag (AEAD
/// ciphers; TLS 1.3 adds one more, TLS 1.2 GCM eight).
const RECORD_OVERHEAD: u64 = 21;

/// A plaintext write waiting for its socket: the kernel's record, its bytes.
pub(super) struct Waiting {
    pub ev: DataEvent,
    pub payload: Vec<u8>,
    pub tail: Vec<u8>,
}

/// Plaintext writes without a socket, per thread, oldest first.
#[derive(Default)]
pub(super) struct Unbound {
    threads: FastMap<u32, VecDeque<Waiting>>,
}

/// How many of a socket write's `len` bytes, beginning with `bytes`, are TLS application-data
/// records (type 23; TLS 1.3 sends everything encrypted so): those from the first such record
/// on, after any handshake, change-cipher-spec or alert records (a TLS 1.3 client writes its
/// first request together with its `ChangeCipherSpec` and `Finished`). None if the write does
/// not begin with TLS records or has no application data in the bytes seen.
fn application_data(bytes: &[u8], len: u64) -> Option<u64> {
    let mut at = 0usize;
    loop {
        let header = bytes.get(at..at + 5)?;
        if header[1] != 3 || !(1..=4).contains(&header[2]) {
            return None;
        }
        match header[0] {
            23 => return len.checked_sub(at as u64),
            20..=22 => at += 5 + usize::from(u16::from_be_bytes([header[3], header[4]])),
            _ => return None,
        }
    }
}

/// Drops the writes at the front of `queue` (oldest first) that waited longer than
/// [`WAIT_NS`] before `now_ns`; returns how many.
fn drop_stale(queue: &mut VecDeque<Waiting>, now_ns: u64) -> u64 {
    let mut dropped = 0;
    while queue
        .front()
        .is_some_and(|w| now_ns.saturating_sub(w.ev.ts_ns) > WAIT_NS)
    {
        queue.pop_front();
        dropped += 1;
    }
    dropped
}

impl Unbound {
    /// Keeps a write of thread `ev.tid`; returns how many writes were dropped to make room or
    /// because they waited too long.
    pub fn park(&mut self, ev: &DataEvent, payload: &[u8], tail: &[u8]) -> u64 {
        let mut dropped = 0;
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&ev.tid) {
            dropped += self.expire(ev.ts_ns);
            if self.threads.len() >= MAX_THREADS {
                // Every thread wrote within the wait: the new write is the one dropped.
                return dropped + 1;
            }
        }
        let queue = self.threads.entry(ev.tid).or_default();
        dropped += drop_stale(queue, ev.ts_ns);
        while queue.len() >= MAX_PER_THREAD {
            queue.pop_front();
            dropped += 1;
        }
        queue.push_back(Waiting {
            ev: *ev,
            payload: payload.to_vec(),
            tail: tail.to_vec(),
        });
        dropped
    }

    /// Whether thread `tid` has writes waiting.
    pub fn waiting(&self, tid: u32) -> bool {
        self.threads.contains_key(&tid)
    }

    /// A socket write `ev` of a thread with writes waiting, beginning with `payload`: the writes
    /// it carries, as records of its socket (oldest first), and how many were dropped for
    /// waiting too long. The first write waiting is taken if the socket write holds TLS
    /// application-data records (a write of the handshake alone leaves them waiting); the next
    /// ones while their plaintext with a record's overhead each still fits in those records.
    pub fn bind(&mut self, ev: &DataEvent, payload: &[u8]) -> (Vec<Waiting>, u64) {
        let Some(queue) = self.threads.get_mut(&ev.tid) else {
            return (Vec::new(), 0);
        };
        let dropped = drop_stale(queue, ev.ts_ns);
        let mut bound = Vec::new();
        if let Some(room) = application_data(payload, ev.len) {
            let mut used = 0u64;
            while let Some(next) = queue.front() {
                let needs = used + next.ev.len + RECORD_OVERHEAD;
                if !bound.is_empty() && needs > room {
                    break;
                }
                used = needs;
                let mut w = queue.pop_front().expect("front exists");
                w.ev.sk = ev.sk;
                w.ev.fd = ev.fd;
                w.ev.role = ev.role;
                w.ev.tuple = ev.tuple;
                w.ev.tuple_known = ev.tuple_known;
                bound.push(w);
            }
        }
        if queue.is_empty() {
            self.threads.remove(&ev.tid);
        }
        (bound, dropped)
    }

    /// Forgets writes that waited longer than [`WAIT_NS`] before `now_ns`; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> u64 {
        let mut dropped = 0;
        self.threads.retain(|_, queue| {
            dropped += drop_stale(queue, now_ns);
            !queue.is_empty()
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use socktrace_common::{DATA_TLS, DIR_EGRESS, ROLE_CLIENT};

    use super::*;

    fn write(tid: u32, sk: u64, ts_ns: u64, len: u64) -> DataEvent {
        // SAFETY: a plain-data struct of integers and byte arrays; all zeroes is a valid value.
        let mut ev: DataEvent = unsafe { std::mem::zeroed() };
        ev.direction = DIR_EGRESS;
        ev.tid = tid;
        ev.pid = tid;
        ev.sk = sk;
        ev.ts_ns = ts_ns;
        ev.len = len;
        ev
    }

    fn plaintext(tid: u32, ts_ns: u64, text: &str) -> DataEvent {
        let mut ev = write(tid, 0, ts_ns, text.len() as u64);
        ev.ctx_flags = DATA_TLS;
        ev
    }

    const RECORD: [u8; 5] = [23, 3, 3, 0, 64];

    #[test]
    fn a_write_takes_the_socket_of_its_threads_next_application_data_record() {
        let mut u = Unbound::default();
        let req = "GET / HTTP/1.1\r\n\r\n";
        assert_eq!(u.park(&plaintext(7, 1_000, req), req.as_bytes(), b""), 0);
        // Another thread's write, then a handshake record of this thread: nothing is taken.
        assert!(u.bind(&write(8, 0xa, 2_000, 100), &RECORD).0.is_empty());
        let mut hello = write(7, 0xb, 3_000, 100);
        hello.role = ROLE_CLIENT;
        assert!(u.bind(&hello, &[22, 3, 1, 0, 95]).0.is_empty());
        assert!(u.waiting(7));
        let mut cipher = write(7, 0xb, 4_000, req.len() as u64 + 22);
        cipher.role = ROLE_CLIENT;
        cipher.fd = 9;
        cipher.tuple_known = 1;
        let (bound, dropped) = u.bind(&cipher, &RECORD);
        assert_eq!(dropped, 0);
        assert_eq!(bound.len(), 1);
        let w = &bound[0];
        assert_eq!(
            (w.ev.sk, w.ev.fd, w.ev.role, w.ev.tuple_known),
            (0xb, 9, ROLE_CLIENT, 1)
        );
        // The plaintext record keeps its own time, length and flags.
        assert_eq!(
            (w.ev.ts_ns, w.ev.len, w.ev.ctx_flags),
            (1_000, 18, DATA_TLS)
        );
        assert_eq!(w.payload, req.as_bytes());
        assert!(!u.waiting(7));
    }

    #[test]
    fn writes_that_fit_one_socket_write_are_taken_together_the_rest_waits() {
        let mut u = Unbound::default();
        for (ts, text) in [(1, "head"), (2, "body"), (3, "next request")] {
            u.park(&plaintext(7, ts, text), text.as_bytes(), b"");
        }
        // Room for the first two records (4 + 21 + 4 + 21), not the third.
        let (bound, _) = u.bind(&write(7, 0xb, 10, 50), &RECORD);
        let texts: Vec<&[u8]> = bound.iter().map(|w| w.payload.as_slice()).collect();
        assert_eq!(texts, [b"head".as_slice(), b"body"]);
        assert!(u.waiting(7));
        // The first one waiting is always taken by an application-data record, however short
        // (the ciphertext of a long write may go out in pieces).
        let (bound, _) = u.bind(&write(7, 0xc, 11, 10), &RECORD);
        assert_eq!(bound[0].payload, b"next request");
        assert_eq!(bound[0].ev.sk, 0xc);
    }

    /// A TLS 1.3 client's first request leaves in one write with its `ChangeCipherSpec` and
    /// `Finished` (encrypted, so itself of type 23).
    #[test]
    fn application_data_after_the_handshake_records_of_the_same_write_counts() {
        let mut write_bytes = vec![20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 69];
        write_bytes.resize(167, 0);
        assert_eq!(application_data(&write_bytes, 167), Some(161));
        assert_eq!(application_data(&RECORD, 69), Some(69));
        // A handshake alone, something else, or records cut before application data.
        assert_eq!(application_data(&[22, 3, 1, 1, 88, 1, 0], 349), None);
        assert_eq!(application_data(b"GET / HTTP/1.1", 14), None);
        assert_eq!(application_data(&write_bytes[..8], 167), None);
        assert_eq!(application_data(&[23, 2, 0, 0, 1], 6), None);
        let mut u = Unbound::default();
        let req = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
        u.park(&plaintext(7, 1, req), req.as_bytes(), b"");
        let (bound, _) = u.bind(&write(7, 0xb, 2, 167), &write_bytes);
        assert_eq!(bound.len(), 1);
    }

    #[test]
    fn a_write_that_waited_too_long_is_dropped_and_counted() {
        let mut u = Unbound::default();
        u.park(&plaintext(7, 1_000, "old"), b"old", b"");
        let (bound, dropped) = u.bind(&write(7, 0xb, 1_000 + WAIT_NS + 1, 100), &RECORD);
        assert!(bound.is_empty());
        assert_eq!(dropped, 1);
        assert!(!u.waiting(7));
        u.park(&plaintext(9, 5, "x"), b"x", b"");
        assert_eq!(u.expire(6 + WAIT_NS), 1);
        assert!(!u.waiting(9));
    }

    #[test]
    fn a_thread_keeps_at_most_its_share_of_writes() {
        let mut u = Unbound::default();
        let mut dropped = 0;
        for ts in 0..(MAX_PER_THREAD as u64 + 3) {
            dropped += u.park(&plaintext(7, ts, "w"), b"w", b"");
        }
        assert_eq!(dropped, 3);
        assert_eq!(u.threads[&7].len(), MAX_PER_THREAD);
        assert_eq!(u.threads[&7][0].ev.ts_ns, 3);
    }
}
