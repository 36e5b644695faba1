//! Connection identity from what the kernel sent, or from procfs for connections the kernel did
//! not see established (older than the agent, or whose state change it missed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socktrace_common::{AF_INET, AF_INET6, ConnTuple};

use super::Role;

/// Identity of a connection resolved outside the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub role: Option<Role>,
}

/// Resolves a socket the kernel did not see being established.
pub trait Resolver {
    fn resolve(&mut self, pid: u32, fd: u32) -> Option<Resolved>;
}

/// The local and peer addresses of a kernel tuple.
pub fn tuple_addrs(t: &ConnTuple) -> Option<(SocketAddr, SocketAddr)> {
    let ip = |a: &[u8; 16]| -> Option<IpAddr> {
        match t.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(&t.saddr)?, t.sport),
        SocketAddr::new(ip(&t.daddr)?, t.dport),
    ))
}

/// The kernel's task name as a string (NUL-terminated, at most 16 bytes).
pub fn comm_of(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Resolves pre-existing connections through procfs: `/proc/PID/fd/FD` names the socket inode,
/// `/proc/PID/net/tcp{,6}` (the process's network namespace) gives its addresses, and a
/// listening socket on the same local port makes the process the server.
#[derive(Default)]
pub struct ProcfsResolver;

impl Resolver for ProcfsResolver {
    fn resolve(&mut self, pid: u32, fd: u32) -> Option<Resolved> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let link = link.to_string_lossy();
        let inode: u64 = link
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        let process = procfs::process::Process::new(pid as i32).ok()?;
        let mut entries = process.tcp().unwrap_or_default();
        entries.extend(process.tcp6().unwrap_or_default());
        let me = entries.iter().find(|e| e.inode == inode)?;
        let normalize = |a: SocketAddr| match a {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                None => a,
            },
            a => a,
        };
        let local = normalize(me.local_address);
        let listening = entries.iter().any(|e| {
            e.state == procfs::net::TcpState::Listen && e.local_address.port() == local.port()
        });
        Some(Resolved {
            local,
            peer: normalize(me.remote_address),
            role: Some(if listening {
                Role::Server
            } else {
                Role::Client
            }),
        })
    }
}
