//! Capture: what runs in the kernel and how it gets there. `probes` loads and attaches the
//! tracepoint programs and reads their ring buffer; `inject` attaches the `traceparent`
//! injection (sock_ops + sk_msg); `caps` checks the capabilities both need; `budget` measures
//! every program against the verifier's limits; `object` is the embedded kernel object;
//! `tracepoints` reads where the tracepoint fields sit on the running kernel; `tls` attaches the
//! uprobes (TLS libraries, Go's `crypto/tls` and runtime), finding Go functions in stripped
//! binaries through `gopclntab`, and `sites` places each uprobe where the kernel does not
//! single-step.
pub mod budget;
pub mod caps;
pub mod gopclntab;
pub mod inject;
pub mod object;
pub mod probes;
pub mod sites;
pub mod tls;
pub mod tracepoints;
