//! Container id -> pod, shared between the watcher (writer) and the capture thread (reader).
//!
//! The capture thread only takes the read lock when the generation counter moved, and holds it
//! for one hash lookup; the watcher holds the write lock only to swap in a finished update, never
//! across an API call. So capture never waits on the network.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use super::model::PodMeta;
use crate::telemetry::Snapshot;

/// The pod and container a container id belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub pod: Arc<PodMeta>,
    pub container_name: String,
}

#[derive(Default)]
struct State {
    /// Pod uid -> (pod, its container ids), to drop the ids when the pod changes or goes.
    pods: HashMap<String, (Arc<PodMeta>, Vec<String>)>,
    containers: HashMap<String, ContainerMeta>,
}

/// What the watcher feeding the index went through, for the agent's counters.
#[derive(Default)]
pub struct WatchStats {
    events: AtomicU64,
    errors: AtomicU64,
}

impl WatchStats {
    pub fn count_event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Pods of this node, by container id.
#[derive(Default)]
pub struct PodIndex {
    state: RwLock<State>,
    generation: AtomicU64,
    stats: WatchStats,
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes whenever the index does; readers re-resolve only when it moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The pod and container of `container_id` (lower-case hex, as in cgroup paths).
    pub fn lookup(&self, container_id: &str) -> Option<ContainerMeta> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.containers.get(container_id).cloned()
    }

    pub fn stats(&self) -> &WatchStats {
        &self.stats
    }

    /// The `k8s` group of the agent's counters.
    pub fn collect(&self, snapshot: &mut Snapshot) {
        snapshot.counter(
            "k8s",
            "watch_events",
            "Pod list and watch events received from the Kubernetes API.",
            self.stats.events(),
        );
        snapshot.counter(
            "k8s",
            "api_errors",
            "Failed Kubernetes list or watch requests (each retry counts; an expired watch too).",
            self.stats.errors(),
        );
        snapshot.gauge(
            "k8s",
            "pods",
            "Pods of this node in the index now.",
            self.pod_count() as u64,
        );
    }

    pub fn pod_count(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.pods.len()
    }

    /// Adds or replaces a pod with its `(container id, container name)` pairs. A pod that did
    /// not change in what the agent keeps (most MODIFIED events are status updates) leaves the
    /// generation alone, so readers do not re-resolve for nothing.
    pub fn upsert(&self, pod: PodMeta, containers: Vec<(String, String)>) {
        if self.unchanged(&pod, &containers) {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        Self::upsert_locked(&mut state, pod, containers);
        drop(state);
        self.bump();
    }

    fn unchanged(&self, pod: &PodMeta, containers: &[(String, String)]) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some((old, ids)) = state.pods.get(&pod.uid) else {
            return false;
        };
        **old == *pod
            && ids.len() == containers.len()
            && containers.iter().all(|(id, name)| {
                state
                    .containers
                    .get(id)
                    .is_some_and(|c| c.pod.uid == pod.uid && c.container_name == *name)
            })
    }

    pub fn remove(&self, uid: &str) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        Self::remove_locked(&mut state, uid);
        drop(state);
        self.bump();
    }

    /// Replaces everything (after a list): pods gone while the watch was down disappear.
    pub fn replace_all(&self, pods: Vec<(PodMeta, Vec<(String, String)>)>) {
        let mut fresh = State::default();
        for (pod, containers) in pods {
            Self::upsert_locked(&mut fresh, pod, containers);
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        *state = fresh;
        drop(state);
        self.bump();
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn remove_locked(state: &mut State, uid: &str) {
        if let Some((_, ids)) = state.pods.remove(uid) {
            for id in ids {
                if state.containers.get(&id).is_some_and(|c| c.pod.uid == uid) {
                    state.containers.remove(&id);
                }
            }
        }
    }

    fn upsert_locked(state: &mut State, pod: PodMeta, containers: Vec<(String, String)>) {
        let uid = pod.uid.clone();
        Self::remove_locked(state, &uid);
        let pod = Arc::new(pod);
        let mut ids = Vec::with_capacity(containers.len());
        for (id, name) in containers {
            state.containers.insert(
                id.clone(),
                ContainerMeta {
                    pod: pod.clone(),
                    container_name: name,
                },
            );
            ids.push(id);
        }
        state.pods.insert(uid, (pod, ids));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str) -> PodMeta {
        PodMeta {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            ..PodMeta::default()
        }
    }

    #[test]
    fn containers_follow_their_pod() {
        let index = PodIndex::new();
        let g0 = index.generation();
        index.upsert(
            pod("u1", "a"),
            vec![("c1".into(), "app".into()), ("c2".into(), "side".into())],
        );
        assert_ne!(index.generation(), g0);
        let c = index.lookup("c2").unwrap();
        assert_eq!(
            (c.pod.name.as_str(), c.container_name.as_str()),
            ("a", "side")
        );

        // A MODIFIED pod whose container restarted: the old id is gone, the new one maps.
        index.upsert(pod("u1", "a"), vec![("c3".into(), "app".into())]);
        assert!(index.lookup("c1").is_none());
        assert_eq!(index.lookup("c3").unwrap().container_name, "app");

        // The same pod again: nothing to re-resolve.
        let g = index.generation();
        index.upsert(pod("u1", "a"), vec![("c3".into(), "app".into())]);
        assert_eq!(index.generation(), g);

        index.remove("u1");
        assert!(index.lookup("c3").is_none());
        assert_eq!(index.pod_count(), 0);
    }

    #[test]
    fn replace_all_drops_pods_not_listed() {
        let index = PodIndex::new();
        index.upsert(pod("u1", "a"), vec![("c1".into(), "app".into())]);
        index.replace_all(vec![(pod("u2", "b"), vec![("c2".into(), "app".into())])]);
        assert!(index.lookup("c1").is_none());
        assert_eq!(index.lookup("c2").unwrap().pod.name, "b");
        assert_eq!(index.pod_count(), 1);
    }

    #[test]
    fn counters_are_collected() {
        let index = PodIndex::new();
        index.upsert(pod("u1", "a"), vec![]);
        index.stats().count_event();
        index.stats().count_error();
        index.stats().count_error();
        let mut s = Snapshot::default();
        index.collect(&mut s);
        assert_eq!(s.get("k8s", "watch_events"), Some(1));
        assert_eq!(s.get("k8s", "api_errors"), Some(2));
        assert_eq!(s.get("k8s", "pods"), Some(1));
    }
}
