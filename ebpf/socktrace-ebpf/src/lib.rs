//! Host-side stub: this crate's real output is the BPF object built from `main.rs`. The library
//! target exists so that `agent` can name the crate as a build dependency and be rebuilt when
//! the kernel programs change.
#![no_std]
