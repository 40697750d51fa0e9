//! What a socket's router, its acceptor and its connections' workers share:
//! the datagrams passed to workers, the commands workers send back, and the
//! routing table those commands edit.
//!
//! These types live apart from the tasks that use them so that the router,
//! the acceptor and the worker each depend on this module and never on one
//! another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique number naming a connection inside the router.
pub(crate) fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// A datagram on its way from the router to a worker.
pub(crate) struct Datagram {
    pub(crate) buf: Vec<u8>,
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
}

/// What workers (and pending connections) tell their router.
#[derive(Debug)]
pub(crate) enum RouterCommand {
    /// Route datagrams for `cid` to connection `conn_id`.
    Map { cid: Box<[u8]>, conn_id: u64 },
    /// Stop routing `cid` to connection `conn_id` (if another connection
    /// has claimed it since, it stays theirs).
    Unmap { cid: Box<[u8]>, conn_id: u64 },
    /// The connection ended: forget it and every id it had.
    Closed { conn_id: u64 },
}

/// What a client socket's router and its connection's worker share.
#[derive(Debug, Default)]
pub(crate) struct ClientSignals {
    pub(crate) established: AtomicBool,
    pub(crate) unreachable: AtomicBool,
}

/// A connection known to the router.
pub(crate) struct Route {
    pub(crate) inbox: mpsc::Sender<Datagram>,
    pub(crate) cids: Vec<Box<[u8]>>,
}

/// The ids of every connection of a listener with several sockets, for
/// packets that reach another socket than their connection's: with
/// SO_REUSEPORT the kernel picks a socket by the client's address, so a
/// client whose address changed (NAT rebinding, migration) lands on
/// another router, which hands the packet over. Each router writes the
/// ids of its own connections; any reads on a miss.
#[derive(Default)]
pub(crate) struct SharedRoutes {
    map: std::sync::RwLock<SharedMap>,
}

/// Connection id → (owning connection, its inbox).
type SharedMap = HashMap<Box<[u8]>, (u64, mpsc::Sender<Datagram>)>;

impl SharedRoutes {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SharedMap> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, cid: &[u8], conn_id: u64, inbox: &mpsc::Sender<Datagram>) {
        self.write().insert(cid.into(), (conn_id, inbox.clone()));
    }

    pub(crate) fn remove(&self, cid: &[u8], conn_id: u64) {
        let mut map = self.write();
        if map.get(cid).is_some_and(|(c, _)| *c == conn_id) {
            map.remove(cid);
        }
    }

    /// The inbox of the connection that owns `cid`, on whichever socket.
    pub(crate) fn get(&self, cid: &[u8]) -> Option<mpsc::Sender<Datagram>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(cid).map(|(_, inbox)| inbox.clone())
    }
}

/// Routing state of one socket. Owned by its router task.
pub(crate) struct Routes {
    by_cid: HashMap<Box<[u8]>, u64>,
    conns: HashMap<u64, Route>,
    /// The listener's table across sockets, when it has several.
    shared: Option<std::sync::Arc<SharedRoutes>>,
}

impl Drop for Routes {
    /// A router that ends (its socket failed, its listener stopped) takes
    /// its connections out of the shared table: their inboxes close, and
    /// no other router hands them packets they cannot answer.
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            for (conn_id, route) in &self.conns {
                for cid in &route.cids {
                    s.remove(cid, *conn_id);
                }
            }
        }
    }
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self {
            by_cid: HashMap::new(),
            conns: HashMap::new(),
            shared: None,
        }
    }

    /// A table that also publishes its ids in `shared`.
    pub(crate) fn with_shared(shared: Option<std::sync::Arc<SharedRoutes>>) -> Self {
        Self {
            by_cid: HashMap::new(),
            conns: HashMap::new(),
            shared,
        }
    }

    /// The listener's table across sockets, if any.
    pub(crate) fn shared(&self) -> Option<&SharedRoutes> {
        self.shared.as_deref()
    }

    /// The same, to hand to a new connection's worker (which publishes the
    /// ids it issues itself, before the peer can use them).
    pub(crate) fn shared_arc(&self) -> Option<std::sync::Arc<SharedRoutes>> {
        self.shared.clone()
    }

    pub(crate) fn insert(
        &mut self,
        conn_id: u64,
        cids: Vec<Box<[u8]>>,
        inbox: mpsc::Sender<Datagram>,
    ) {
        for cid in &cids {
            self.by_cid.insert(cid.clone(), conn_id);
            if let Some(s) = &self.shared {
                s.add(cid, conn_id, &inbox);
            }
        }
        self.conns.insert(conn_id, Route { inbox, cids });
    }

    pub(crate) fn apply(&mut self, cmd: RouterCommand) {
        match cmd {
            RouterCommand::Map { cid, conn_id } => {
                if let Some(route) = self.conns.get_mut(&conn_id) {
                    if let Some(s) = &self.shared {
                        s.add(&cid, conn_id, &route.inbox);
                    }
                    route.cids.push(cid.clone());
                    self.by_cid.insert(cid, conn_id);
                }
            }
            RouterCommand::Unmap { cid, conn_id } => {
                if let Some(route) = self.conns.get_mut(&conn_id) {
                    route.cids.retain(|c| *c != cid);
                }
                if let Some(s) = &self.shared {
                    s.remove(&cid, conn_id);
                }
                if self.by_cid.get(&cid) == Some(&conn_id) {
                    self.by_cid.remove(&cid);
                }
            }
            RouterCommand::Closed { conn_id } => {
                if let Some(route) = self.conns.remove(&conn_id) {
                    for cid in route.cids {
                        if let Some(s) = &self.shared {
                            s.remove(&cid, conn_id);
                        }
                        // Another connection may have taken over this id since.
                        if self.by_cid.get(&cid) == Some(&conn_id) {
                            self.by_cid.remove(&cid);
                        }
                    }
                }
            }
        }
    }

    /// The connection `dcid` belongs to.
    pub(crate) fn get(&self, dcid: &[u8]) -> Option<&Route> {
        self.by_cid
            .get(dcid)
            .and_then(|conn_id| self.conns.get(conn_id))
    }

    /// The connection, when there is exactly one (as on a client socket).
    pub(crate) fn sole(&self) -> Option<&Route> {
        (self.conns.len() == 1)
            .then(|| self.conns.values().next())
            .flatten()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_edit_the_table() {
        let (tx, _rx) = mpsc::channel(1);
        let (other_tx, _other_rx) = mpsc::channel(1);
        let mut routes = Routes::new();
        routes.insert(1, vec![b"a".as_slice().into()], tx);
        routes.apply(RouterCommand::Map {
            cid: b"b".as_slice().into(),
            conn_id: 1,
        });
        assert!(routes.get(b"b").is_some());
        assert!(routes.sole().is_some());
        routes.apply(RouterCommand::Unmap {
            cid: b"a".as_slice().into(),
            conn_id: 1,
        });
        assert!(routes.get(b"a").is_none());
        // Connection 2 now claims "b" too: closing 1 must leave it alone.
        routes.insert(2, vec![b"b".as_slice().into()], other_tx);
        assert!(routes.sole().is_none());
        routes.apply(RouterCommand::Closed { conn_id: 1 });
        assert!(routes.get(b"b").is_some());
        routes.apply(RouterCommand::Closed { conn_id: 2 });
        assert!(routes.get(b"b").is_none());
        assert!(routes.is_empty());
    }
}

/// Randomised command sequences against the table's invariants (a short
/// run here; `PROPTEST_CASES=N` for more).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, Vec<u8>),
        Map(u64, u8),
        Unmap(u64, u8),
        Closed(u64),
    }

    /// Few connections and few distinct ids, so that ids collide and
    /// connections come and go under each other.
    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..4, proptest::collection::vec(0u8..6, 0..3))
                .prop_map(|(c, ids)| Op::Insert(c, ids)),
            (0u64..4, 0u8..6).prop_map(|(c, id)| Op::Map(c, id)),
            (0u64..4, 0u8..6).prop_map(|(c, id)| Op::Unmap(c, id)),
            (0u64..4).prop_map(Op::Closed),
        ]
    }

    proptest! {
        #[test]
        fn every_id_routes_to_a_live_connection_that_holds_it(ops in proptest::collection::vec(op(), 0..40)) {
            let (tx, _rx) = mpsc::channel(1);
            let shared = std::sync::Arc::new(SharedRoutes::default());
            let mut routes = Routes::with_shared(Some(shared.clone()));
            for op in ops {
                match op {
                    Op::Insert(c, ids) => {
                        if !routes.conns.contains_key(&c) {
                            routes.insert(c, ids.iter().map(|i| vec![*i].into()).collect(), tx.clone());
                        }
                    }
                    Op::Map(c, id) => routes.apply(RouterCommand::Map { cid: vec![id].into(), conn_id: c }),
                    Op::Unmap(c, id) => routes.apply(RouterCommand::Unmap { cid: vec![id].into(), conn_id: c }),
                    Op::Closed(c) => {
                        routes.apply(RouterCommand::Closed { conn_id: c });
                        prop_assert!(routes.by_cid.values().all(|v| *v != c));
                    }
                }
                for (cid, conn) in &routes.by_cid {
                    let route = routes.conns.get(conn);
                    prop_assert!(route.is_some_and(|r| r.cids.contains(cid)), "{cid:?} -> {conn}");
                }
                // The shared table is the local one: same ids, same owners.
                let shared_map: HashMap<Box<[u8]>, u64> = shared
                    .map
                    .read()
                    .unwrap()
                    .iter()
                    .map(|(k, (c, _))| (k.clone(), *c))
                    .collect();
                prop_assert_eq!(&shared_map, &routes.by_cid);
            }
        }
    }
}
