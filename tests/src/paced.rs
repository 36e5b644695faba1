//! A paced HTTP load generator for the benchmark: many keep-alive connections to one server and
//! requests at a fixed total rate, spread round-robin over them (`wrk` has no rate option, and
//! it keeps every connection busy, so it cannot hold 10,000 mostly idle connections either).
//!
//! The schedule is open-loop: request `j` of a thread is due at `start + j / rate`, and a thread
//! that falls behind sends at once until it has caught up, so the rate holds on average as long
//! as the server keeps up. Each thread has one request in flight at a time (`GET /` over HTTP/1.1,
//! the response read to its `Content-Length`); a connection that fails is reopened and the
//! request counted as an error.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// What one paced run did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Paced {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed (connection error, or another status).
    pub errors: u64,
    /// Seconds from the first request to the last answer.
    pub seconds: f64,
}

impl Paced {
    /// Requests answered per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: socktrace-bench\r\n\r\n";

/// Raises this process's open-file limit (soft and, with CAP_SYS_RESOURCE, hard) to at least `n`.
pub fn raise_nofile(n: u64) -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur >= n {
            return Ok(());
        }
        lim.rlim_cur = n;
        lim.rlim_max = lim.rlim_max.max(n);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// One request and its whole response on `stream`; whether the status was 200.
fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    stream.write_all(REQUEST)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = header_end(buf)
            && buf.len() >= end + 4 + content_length(&buf[..end])
        {
            return Ok(buf.starts_with(b"HTTP/1.1 200"));
        }
    }
}

/// One thread's share: its connections, requests due every `interval` from `start` to `end`.
fn drive(
    addr: SocketAddr,
    mut conns: Vec<TcpStream>,
    start: Instant,
    end: Instant,
    interval: Duration,
) -> Paced {
    let mut out = Paced::default();
    let mut buf = Vec::with_capacity(4096);
    for j in 0u32.. {
        let due = start + interval * j;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let i = j as usize % conns.len();
        out.sent += 1;
        match exchange(&mut conns[i], &mut buf) {
            Ok(true) => out.ok += 1,
            Ok(false) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                if let Ok(s) = connect(addr) {
                    conns[i] = s;
                }
            }
        }
    }
    out
}

/// Opens `connections` keep-alive connections to `addr` (raise the open-file limit first when
/// they are many), then sends `rate` requests per second over them, round-robin, for `duration`,
/// from `threads` threads; the connections are closed at the end.
pub fn paced(
    addr: SocketAddr,
    connections: usize,
    rate: u64,
    duration: Duration,
    threads: usize,
) -> Result<Paced, String> {
    let threads = threads.clamp(1, connections.max(1));
    let mut shares: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..connections {
        let s = connect(addr).map_err(|e| format!("connection {i} to {addr}: {e}"))?;
        shares[i % threads].push(s);
    }
    let interval = Duration::from_secs_f64(threads as f64 / rate.max(1) as f64);
    let start = Instant::now();
    let end = start + duration;
    let handles: Vec<_> = shares
        .into_iter()
        .map(|conns| std::thread::spawn(move || drive(addr, conns, start, end, interval)))
        .collect();
    let mut total = Paced::default();
    for h in handles {
        let p = h.join().map_err(|_| "a load thread panicked")?;
        total.sent += p.sent;
        total.ok += p.ok;
        total.errors += p.errors;
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_head_and_the_body_length() {
        let resp =
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 17\r\n\r\nhello from nginx\n";
        let end = header_end(resp).unwrap();
        assert_eq!(content_length(&resp[..end]), 17);
        assert_eq!(resp.len(), end + 4 + 17);
        assert_eq!(content_length(b"HTTP/1.1 204 No Content"), 0);
    }
}
