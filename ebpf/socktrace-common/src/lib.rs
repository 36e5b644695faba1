//! Types shared by the kernel programs (`socktrace-ebpf`) and user space (`socktrace` agent).
//!
//! Every struct here crosses the kernel/user boundary as raw bytes, so each one is `#[repr(C)]`,
//! has explicit padding fields, and holds only integers and byte arrays: any bit pattern is a
//! valid value, which is what `aya::Pod` requires and what a ring-buffer reader can rely on.
#![no_std]

/// Largest payload prefix the kernel copies per socket read or write (a power of two, so the
/// kernel can bound lengths with a mask the verifier understands).
pub const MAX_CAPTURE: usize = 8192;
/// Default payload prefix: enough for the request or response head of ordinary HTTP traffic.
pub const DEFAULT_CAPTURE: u32 = 2048;
/// Most bytes copied from the *end* of a read or write longer than the prefix (the "tail"): the
/// framing that closes a large message (a gRPC trailer, a PostgreSQL CommandComplete, a chunked
/// terminator) usually sits there.
pub const TAIL_CAPTURE: usize = 256;

/// Names of the read-only globals user space sets before loading the programs.
pub const GLOBAL_AGENT_TGID: &str = "AGENT_TGID";
pub const GLOBAL_CAPTURE_BYTES: &str = "CAPTURE_BYTES";
pub const GLOBAL_FILTER_PIDS: &str = "FILTER_PIDS";
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";
/// Non-zero: the `sk_msg` program inserts `traceparent` headers (set when it is attached).
pub const GLOBAL_INJECT_ENABLED: &str = "INJECT_ENABLED";
pub const GLOBAL_TP_OFFSETS: &str = "TP_OFFSETS";
/// Non-zero: TLS library calls are followed (the socket hooks look for one in progress).
pub const GLOBAL_TLS_ENABLED: &str = "TLS_ENABLED";

/// The head sampler's rule for the flags of injected headers: the trace-id ratio threshold
/// (`u64`, the 56 low bits of a trace id at least this much: sampled) and whether a request's
/// own `traceparent` flags are followed instead (`u32`, non-zero for parent-based samplers).
pub const GLOBAL_SAMPLE_THRESHOLD: &str = "SAMPLE_THRESHOLD";
pub const GLOBAL_SAMPLE_PARENT: &str = "SAMPLE_PARENT";

/// The line the kernel inserts after the request line of an outgoing HTTP/1 request:
/// `traceparent: 00-<32 hex trace id>-<16 hex span id>-<01 or 00>\r\n`.
pub const TRACEPARENT_LINE_LEN: u32 = 70;
/// Most bytes of an outgoing message the `sk_msg` program reads to find the end of a request
/// head: a request whose header block is longer is sent unchanged, and the socket is left alone
/// from then on (its framing is unknown).
pub const INJECT_HEAD_WINDOW: usize = 4096;
/// Longest HTTP/2 header block (bytes of one HEADERS frame, without padding and priority) the
/// `sk_msg` program scans for an existing `traceparent` before adding one: a power of two.
pub const INJECT_H2_WINDOW: usize = 256;
/// Bytes of the `traceparent` field added to an HTTP/2 header block: HPACK "literal header
/// field without indexing - new name" (0x00), name length 11 and the name, value length 55
/// and the value, no Huffman coding.
pub const TRACEPARENT_H2_FIELD_LEN: u32 = 2 + 11 + 1 + 55;
/// The name `traceparent` Huffman-coded (RFC 7541 Appendix B): 59 bits and 5 of EOS padding,
/// the form an HPACK encoder may send instead of the 11 raw bytes.
pub const TRACEPARENT_HUFFMAN: [u8; 8] = [0x4d, 0x83, 0x21, 0x6b, 0x1d, 0x85, 0xa9, 0x3f];
/// Most bytes at the start of a server read in which the kernel looks for an incoming
/// `traceparent` header (within the captured prefix).
pub const CTX_HEADER_WINDOW: usize = 2048;

/// Record kinds written to the ring buffer; the first `u32` of every record.
pub const EVENT_DATA: u32 = 1;
pub const EVENT_CONN_CLOSE: u32 = 2;
pub const EVENT_EXEC: u32 = 3;
pub const EVENT_EXIT: u32 = 4;
pub const EVENT_INJECT: u32 = 5;
pub const EVENT_CONNECT: u32 = 6;
/// [`ExecEnvEvent`].
pub const EVENT_EXEC_ENV: u32 = 7;

/// `DataEvent::ctx_flags`: this read began an HTTP/1 request on a server socket and the kernel
/// made it the calling thread's current server context (`DataEvent::trace_id` is its trace).
pub const CTX_SERVER_REQUEST: u32 = 1;
/// With `CTX_SERVER_REQUEST`: the trace id came from the request's own `traceparent` header
/// (otherwise the kernel drew it at random).
pub const CTX_FROM_HEADER: u32 = 2;
/// `DataEvent::ctx_flags`: records of this socket were lost (ring buffer full) since its
/// previous record: the stream has a hole of unknown size before this one.
pub const DATA_LOST_BEFORE: u32 = 4;
/// Or-ed into `CloseEvent::new_state`: records of the socket were lost since its last one, so
/// the connection may end with a hole that no later record will announce.
pub const CLOSE_LOST_BEFORE: u32 = 1 << 16;
/// `DataEvent::ctx_flags`: plaintext read or written through a TLS library (`SSL_read`,
/// `SSL_write`...), not the socket's own bytes; the socket's ciphertext is not sent at all while
/// the library is in the call.
pub const DATA_TLS: u32 = 8;
/// The record is from a Go process whose goroutines the kernel follows: its request context is
/// `DataEvent::link_sk`/`link_ts` alone, never its thread's.
pub const CTX_GO: u32 = 16;

/// Direction of a socket data event, seen from the traced process.
pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

/// Role of the traced process on a connection.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process opened the connection (`connect`): it is the client.
pub const ROLE_CLIENT: u32 = 1;
/// The process accepted the connection: it is the server.
pub const ROLE_SERVER: u32 = 2;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// TCP states as reported by `sock:inet_sock_set_state`.
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;

/// A connection's identity as the kernel saw it at `ESTABLISHED`.
///
/// Addresses are 16 bytes; for `AF_INET` only the first four are used. Ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub _pad: u16,
}

/// Value of the kernel's socket table: what is known about a socket pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub tuple: ConnTuple,
    pub role: u32,
    pub _pad: u32,
}

/// Header of an `EVENT_DATA` record; `captured` payload bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub kind: u32,
    pub direction: u32,
    /// `CLOCK_MONOTONIC` nanoseconds at the end of the syscall.
    pub ts_ns: u64,
    /// Kernel socket pointer: a stable connection id for the socket's lifetime.
    pub sk: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: u32,
    /// `ROLE_*`; `ROLE_UNKNOWN` when the connection predates the agent.
    pub role: u32,
    /// Bytes the syscall actually transferred (exact, even when the copy was truncated).
    pub len: u64,
    /// Payload bytes that follow this header (`<= len`).
    pub captured: u32,
    /// Non-zero when `tuple` is valid (the kernel saw the connection being established).
    pub tuple_known: u32,
    pub tuple: ConnTuple,
    /// Task name of the caller: names the process when it has exited before user space reads
    /// `/proc` (a short-lived client such as `curl`).
    pub comm: [u8; 16],
    /// Bytes copied from the end of the I/O, following the `captured` prefix bytes in the record.
    /// They are the last `tail` of the `len` bytes and never overlap the prefix.
    pub tail: u32,
    /// `CTX_*` bits: what the kernel decided about trace context for this I/O.
    pub ctx_flags: u32,
    /// With `CTX_SERVER_REQUEST`: the trace id the kernel will put into `traceparent` headers
    /// it injects into requests this thread sends while serving the request.
    pub trace_id: [u8; 16],
    /// With `CTX_GO`, on a write: the request it was made for, as the socket and `ts_ns` of
    /// the record that began it; 0 when none.
    pub link_sk: u64,
    pub link_ts: u64,
}

/// A payload-carrying record as staged in the kernel's per-CPU scratch buffer.
///
/// `data` is three times `MAX_CAPTURE` (plus room for a masked tail) so that a copy at a masked
/// offset with a masked length always stays inside it: that is how the verifier is convinced
/// when several iovecs are gathered.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEventBuf {
    pub header: DataEvent,
    pub data: [u8; 3 * MAX_CAPTURE + 2 * TAIL_CAPTURE],
}

/// `EVENT_CONN_CLOSE`: a traced socket left the established state.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub kind: u32,
    /// The TCP state entered (`TCP_FIN_WAIT1`, `TCP_CLOSE_WAIT` or `TCP_CLOSE`), with
    /// `CLOSE_LOST_BEFORE` when records of the socket were lost since its last one.
    pub new_state: u32,
    pub ts_ns: u64,
    pub sk: u64,
}

/// `EVENT_CONNECT`: a traced process's `connect()` established a TCP connection.
///
/// Emitted when the handshake completes, before either end can send data, so it precedes every
/// record of both ends of the connection: a server on this host reading from it knows at once
/// that its client is traced (and its request context will come).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub kind: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub sk: u64,
    /// The client's view: `saddr`/`sport` its own end, `daddr`/`dport` the server.
    pub tuple: ConnTuple,
}

/// `EVENT_EXEC` / `EVENT_EXIT`: a process image changed or a process ended.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub pid: u32,
    pub ts_ns: u64,
    /// At exec: the process's cgroup (v2) id, the inode of its cgroupfs directory, so that a
    /// process gone before user space reads `/proc` still has a container; 0 at exit.
    pub cgroup_id: u64,
}

/// Longest `OTEL_SERVICE_NAME` value kept from an exec, NUL included.
pub const EXEC_SERVICE_LEN: usize = 128;
/// Longest `OTEL_RESOURCE_ATTRIBUTES` value kept from an exec, NUL included.
pub const EXEC_ATTRS_LEN: usize = 512;

/// `EVENT_EXEC_ENV`: the OpenTelemetry resource variables a program was started with, read from
/// the `execve` arguments (no other variable is kept), sent at the exec, just before the
/// `EVENT_EXEC` of the same process. A process that lives a few milliseconds is gone before
/// user space could read its `/proc/PID/environ`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEnvEvent {
    pub kind: u32,
    pub pid: u32,
    /// Bytes of each value (without the NUL); 0 when the variable is not set. A value longer
    /// than its field is cut, and `truncated` is 1.
    pub service_len: u16,
    pub attrs_len: u16,
    pub truncated: u32,
    pub service: [u8; EXEC_SERVICE_LEN],
    pub attrs: [u8; EXEC_ATTRS_LEN],
}

/// `EVENT_INJECT`: the kernel inserted a `traceparent` line into an outgoing HTTP/1 request, or
/// a `traceparent` field into the HEADERS frame of a new HTTP/2 stream (`stream` non-zero).
///
/// Emitted from the `sk_msg` program during the `sendmsg`/`write` that carries the request, so
/// it precedes that call's `EVENT_DATA` record (whose payload shows the bytes as the application
/// wrote them, without the inserted line).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InjectEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// Offset in the message where the line was inserted (just after the request line), or
    /// for HTTP/2 where the field was inserted (the end of the header block).
    pub offset: u32,
    pub ts_ns: u64,
    /// Kernel socket pointer, the same value as `DataEvent::sk`.
    pub sk: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// HTTP/2: the stream whose HEADERS frame received the field; 0 for HTTP/1.
    pub stream: u32,
    pub _pad: u32,
}

/// Where the tracepoint fields the programs read sit in each tracepoint's record. User space
/// reads them from the kernel's format files before load (they differ between kernel versions:
/// `sched_process_fork` stored the task names inline before Linux 5.x); the defaults are those of
/// current kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpOffsets {
    /// `sock:sock_send_length` and `sock:sock_recv_length` (same layout).
    pub len_sk: u16,
    pub len_family: u16,
    pub len_protocol: u16,
    pub len_flags: u16,
    /// `sock:inet_sock_set_state`.
    pub st_skaddr: u16,
    pub st_oldstate: u16,
    pub st_newstate: u16,
    pub st_sport: u16,
    pub st_dport: u16,
    pub st_family: u16,
    pub st_protocol: u16,
    pub st_saddr: u16,
    pub st_daddr: u16,
    pub st_saddr_v6: u16,
    pub st_daddr_v6: u16,
    /// `sched:sched_process_fork`.
    pub fork_child_pid: u16,
    /// `sched:sched_process_exec`.
    pub exec_pid: u16,
    pub _pad: u16,
}

impl TpOffsets {
    pub const DEFAULT: Self = Self {
        len_sk: 8,
        len_family: 16,
        len_protocol: 18,
        len_flags: 24,
        st_skaddr: 8,
        st_oldstate: 16,
        st_newstate: 20,
        st_sport: 24,
        st_dport: 26,
        st_family: 28,
        st_protocol: 30,
        st_saddr: 32,
        st_daddr: 36,
        st_saddr_v6: 40,
        st_daddr_v6: 56,
        fork_child_pid: 20,
        exec_pid: 12,
        _pad: 0,
    };

    /// The struct as the kernel reads it, field after field in native byte order.
    pub fn to_ne_bytes(&self) -> [u8; core::mem::size_of::<Self>()] {
        let words = [
            self.len_sk,
            self.len_family,
            self.len_protocol,
            self.len_flags,
            self.st_skaddr,
            self.st_oldstate,
            self.st_newstate,
            self.st_sport,
            self.st_dport,
            self.st_family,
            self.st_protocol,
            self.st_saddr,
            self.st_daddr,
            self.st_saddr_v6,
            self.st_daddr_v6,
            self.fork_child_pid,
            self.exec_pid,
            self._pad,
        ];
        let mut out = [0; core::mem::size_of::<Self>()];
        let mut i = 0;
        while i < words.len() {
            let b = words[i].to_ne_bytes();
            out[2 * i] = b[0];
            out[2 * i + 1] = b[1];
            i += 1;
        }
        out
    }
}

/// Indices of the per-CPU `STATS` array. Each counts occurrences since load.
pub mod stats {
    /// Declares the counter indices, with their names and descriptions (the doc comments).
    macro_rules! counters {
        ($( $(#[doc = $doc:literal])+ $konst:ident = $idx:literal, $name:literal; )*) => {
            $( $(#[doc = $doc])+ pub const $konst: u32 = $idx; )*
            pub const COUNT: u32 = [$($idx),*].len() as u32;
            /// Names, indexed like the constants.
            pub const NAMES: [&str; COUNT as usize] = [$($name),*];
            /// Descriptions, indexed like the constants.
            pub const HELP: [&str; COUNT as usize] = [$(concat!($($doc),+)),*];
        };
    }

    counters! {
        /// Records written to the ring buffer.
        EVENTS_SENT = 0, "events_sent";
        /// Records lost because the ring buffer was full.
        RINGBUF_FULL = 1, "ringbuf_full";
        /// Payload copies from user memory that failed (the event is still sent, without payload).
        READ_USER_FAILED = 2, "read_user_failed";
        /// Socket I/O whose syscall entry was not seen (agent started mid-call, or map full).
        MISSING_ENTRY = 3, "missing_syscall_entry";
        /// Updates of a kernel hash map that failed.
        MAP_UPDATE_FAILED = 4, "map_update_failed";
        /// Socket I/O on the agent's own connections or their peers, skipped.
        SELF_SKIPPED = 5, "self_traffic_skipped";
        /// Socket I/O truncated to the capture size.
        TRUNCATED = 6, "payload_truncated";
        /// Calls that began before the agent attached, recovered from the task's saved registers.
        RECOVERED_ENTRY = 7, "recovered_syscall_entry";
        /// Requests that received a `traceparent` line from the `sk_msg` program.
        INJECTED = 8, "injected";
        /// Requests sent unchanged because they already carry `traceparent`.
        INJECT_SKIP_HAS_TRACEPARENT = 9, "inject_skipped_has_traceparent";
        /// Requests whose header block did not end inside the message (written in pieces, or longer
        /// than `INJECT_HEAD_WINDOW`): sent unchanged, and the connection is left alone.
        INJECT_SKIP_INCOMPLETE = 10, "inject_skipped_incomplete_headers";
        /// Requests that began in the middle of a write (pipelined behind another one): unchanged.
        INJECT_SKIP_MID_MESSAGE = 11, "inject_skipped_mid_message";
        /// Requests whose body length the kernel cannot follow (chunked, invalid `Content-Length`,
        /// `Upgrade`, `CONNECT`): the connection is left alone after them.
        INJECT_SKIP_UNKNOWN_FRAMING = 12, "inject_skipped_unknown_framing";
        /// `bpf_msg_push_data` / `bpf_msg_pull_data` failures (the message is sent unchanged).
        INJECT_PUSH_FAILED = 13, "inject_push_failed";
        /// Client connections whose first bytes are not an HTTP/1 request: left alone.
        INJECT_NOT_HTTP = 14, "inject_not_http";
        /// Requests not injected because the writer is not traced or its write is not seen
        /// (no client span would carry the ids).
        INJECT_SKIP_UNTRACED = 15, "inject_skipped_untraced";
        /// Client sockets that could not be added to the injection socket map.
        INJECT_SOCK_ADD_FAILED = 16, "inject_sock_add_failed";
        /// Header scans abandoned because another task reused this CPU's scratch buffer meanwhile
        /// (the connection is left alone).
        INJECT_SCRATCH_RACE = 17, "inject_scratch_race";
        /// Server reads that began an HTTP/1 request and set the thread's trace context.
        SERVER_CTX_SET = 18, "server_ctx_set";
        /// Of those, contexts whose trace id came from the request's `traceparent`.
        SERVER_CTX_FROM_HEADER = 19, "server_ctx_from_header";
        /// Writes on followed client sockets that the kernel could not send whole (full send
        /// buffer of a non-blocking socket, a signal): the rest passes unseen, so the connection is
        /// left alone from then on.
        INJECT_PARTIAL_SEND = 20, "inject_partial_send";
        /// TLS library calls whose plaintext was sent to user space.
        TLS_PLAINTEXT = 21, "tls_plaintext";
        /// TLS library reads on a socket the kernel could not name (no socket call happened inside
        /// this one or an earlier call on the same TLS session, and the thread read no socket
        /// before it), and Go writes of a session not seen before: plaintext lost.
        TLS_NO_SOCKET = 22, "tls_no_socket";
        /// Socket reads and writes of TLS library calls, not sent (their plaintext is).
        TLS_CIPHERTEXT_SKIPPED = 23, "tls_ciphertext_skipped";
        /// TLS sessions on memory buffers (no socket call inside the library's calls), tied to the
        /// socket their thread read last.
        TLS_BOUND_BY_LAST_READ = 24, "tls_bound_by_last_read";
        /// HTTP/2 streams whose HEADERS frame received a `traceparent` field from the `sk_msg`
        /// program (also counted in `injected`).
        INJECT_H2 = 25, "injected_http2";
        /// New HTTP/2 streams sent unchanged because their header block names `traceparent`, or
        /// an earlier one on the connection did (it may be indexed in the dynamic table now).
        INJECT_H2_SKIP_HAS_TRACEPARENT = 26, "inject_http2_skipped_has_traceparent";
        /// New HTTP/2 streams sent unchanged because the field could not be added exactly: header
        /// block continued in CONTINUATION frames, HEADERS frame not whole in the message, header
        /// block over `INJECT_H2_WINDOW` bytes, or the frame would outgrow 16384 bytes.
        INJECT_H2_SKIP_INEXACT = 27, "inject_http2_skipped_inexact";
        /// HTTP/2 client connections whose frame boundaries were lost (a frame header split
        /// between writes, a preface not whole in the first write): left alone from then on.
        INJECT_H2_FRAMING_LOST = 28, "inject_http2_framing_lost";
        /// TLS writes of a library on memory buffers before its session's socket is known (a
        /// client's first request: the library encrypts into memory and the application writes
        /// the ciphertext to the socket after the call). Sent without a socket; user space ties
        /// each to its thread's next socket write (`tls_bound_by_next_write`).
        TLS_WRITE_UNBOUND = 29, "tls_write_unbound";
        /// Client sockets the injection left alone for good (not HTTP, framing lost, a write it
        /// could not see), handed to user space to take out of the socket map.
        INJECT_RELEASED = 30, "inject_released";
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `repr(C)` aggregates of integers and byte arrays with explicit
    // padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for ConnTuple {}
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for DataEvent {}
    unsafe impl aya::Pod for CloseEvent {}
    unsafe impl aya::Pod for ProcEvent {}
    unsafe impl aya::Pod for ExecEnvEvent {}
    unsafe impl aya::Pod for InjectEvent {}
    unsafe impl aya::Pod for ConnectEvent {}
    unsafe impl aya::Pod for TpOffsets {}
}

/// Size of a field's type, from a field accessor (usable in constants).
#[doc(hidden)]
pub const fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    core::mem::size_of::<F>()
}

/// Compile-time layout guard of a wire struct: its size, and its fields (in declaration order)
/// tiling it with no implicit padding, so that every byte is a field the other side reads.
macro_rules! wire_layout {
    ($t:ty, $size:expr, $($field:ident),+ $(,)?) => {
        const _: () = {
            assert!(core::mem::size_of::<$t>() == $size);
            let mut end = 0;
            $(
                assert!(core::mem::offset_of!($t, $field) == end, "implicit padding");
                end += field_size(|s: &$t| &s.$field);
            )+
            assert!(end == $size, "implicit padding at the end");
        };
    };
}

// Layout guards: a change here changes the wire format between kernel and user space.
wire_layout!(ConnTuple, 40, saddr, daddr, sport, dport, family, _pad);
wire_layout!(SockInfo, 48, tuple, role, _pad);
wire_layout!(
    DataEvent,
    152,
    kind,
    direction,
    ts_ns,
    sk,
    pid,
    tid,
    fd,
    role,
    len,
    captured,
    tuple_known,
    tuple,
    comm,
    tail,
    ctx_flags,
    trace_id,
    link_sk,
    link_ts,
);
wire_layout!(
    DataEventBuf,
    152 + 3 * MAX_CAPTURE + 2 * TAIL_CAPTURE,
    header,
    data
);
wire_layout!(CloseEvent, 24, kind, new_state, ts_ns, sk);
wire_layout!(ConnectEvent, 64, kind, _pad, ts_ns, sk, tuple);
wire_layout!(ProcEvent, 24, kind, pid, ts_ns, cgroup_id);
wire_layout!(
    ExecEnvEvent,
    16 + EXEC_SERVICE_LEN + EXEC_ATTRS_LEN,
    kind,
    pid,
    service_len,
    attrs_len,
    truncated,
    service,
    attrs
);
wire_layout!(
    TpOffsets,
    36,
    len_sk,
    len_family,
    len_protocol,
    len_flags,
    st_skaddr,
    st_oldstate,
    st_newstate,
    st_sport,
    st_dport,
    st_family,
    st_protocol,
    st_saddr,
    st_daddr,
    st_saddr_v6,
    st_daddr_v6,
    fork_child_pid,
    exec_pid,
    _pad,
);
wire_layout!(
    InjectEvent,
    64,
    kind,
    pid,
    tid,
    offset,
    ts_ns,
    sk,
    trace_id,
    span_id,
    stream,
    _pad
);
