//! Resources: who made a span. `process` reads each traced process's resource attributes
//! from procfs and caches them; `k8s` adds pod, namespace and owner from the Kubernetes API;
//! `select` decides which processes are traced (`--pid`, `--exe`, namespaces, containers).
pub mod k8s;
pub mod process;
pub mod select;
pub mod stat;
